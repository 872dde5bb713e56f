"""Which implementation runs: compiled Triton, Triton under its interpreter, or the torch reference.

The rule: CUDA tensors run the compiled Triton kernels; CPU tensors run the torch reference,
unless the caller passes `interpret=True` or the environment sets KVSIM_TRITON_INTERPRET=1, in
which case the Triton kernels run under Triton's CPU interpreter (slow; for tests).

Triton fixes its mode when it is imported: with TRITON_INTERPRET=1 set then, its own library
functions (tl.sum, tl.max, ...) and every later @triton.jit become interpreted; without it they
can only compile, and one process cannot mix the two. So the Triton kernel modules are imported
lazily, on the first call that needs them, and the interpreter is switched on (the environment
variable set) if triton is not imported yet; if it was imported in the compiled mode, we say so
instead of failing somewhere inside the interpreter.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType

import torch

# The SM count the split heuristic assumes off the GPU (an H100), so interpreter runs choose
# the splits a GPU would.
DEFAULT_NUM_SMS = 132


def interpret_requested(interpret: bool | None) -> bool:
    """True if the caller (or KVSIM_TRITON_INTERPRET=1) asks for the interpreter on CPU tensors."""
    if interpret is not None:
        return interpret
    return os.environ.get("KVSIM_TRITON_INTERPRET", "0") == "1"


def backend_for(tensor: torch.Tensor, interpret: bool | None) -> str:
    """'triton' (CUDA: compiled), 'interpret' (CPU: Triton's interpreter) or 'reference' (torch)."""
    if tensor.is_cuda:
        return "triton"
    return "interpret" if interpret_requested(interpret) else "reference"


def prefer_interpreter_on_cpu_only_hosts() -> None:
    """On a host without CUDA, set TRITON_INTERPRET=1 before anything imports triton.

    Compiled Triton cannot run there at all, so this only decides that a later import of triton
    (by these kernels, or by a test that imports them after another test) can interpret.
    """
    if "triton" not in sys.modules and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def triton_interprets() -> bool:
    """Whether the imported triton runs kernels under its interpreter."""
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    return not isinstance(tl.sum, JITFunction)  # a @triton.jit of triton's, decorated at its import


def triton_module(name: str, backend: str) -> ModuleType:
    """kernels.<name>, the Triton kernels and their launchers, ready for `backend`."""
    if backend == "interpret":
        if "triton" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"
        elif not triton_interprets():
            raise RuntimeError(
                "kvsim kernels: the Triton interpreter was asked for, but triton was imported "
                "before TRITON_INTERPRET=1 was set, so it can only compile for a GPU. Set "
                "TRITON_INTERPRET=1 in the environment (or import kernels before triton).")
    return importlib.import_module(f"kernels.{name}")


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (DEFAULT_NUM_SMS off the GPU)."""
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return DEFAULT_NUM_SMS
