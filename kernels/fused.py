"""Fused per-layer ops of the decoder: RMSNorm (with the residual add), RoPE in place, SiLU-and-mul.

Each replaces a handful of torch kernels with one launch. They dispatch as kernels/__init__.py
does (kernels/_dispatch.py): CUDA tensors -> the Triton kernels of kernels/fused_ops.py; CPU
tensors -> the torch references of kernels/fused_ref.py, or the Triton kernels under Triton's
interpreter with `interpret=True` or KVSIM_TRITON_INTERPRET=1.

None syncs with the host and every output has a static shape, so all are CUDA-graph safe.
"""

from __future__ import annotations

import torch

from kernels import fused_ref as ref
from kernels._dispatch import backend_for, triton_module

__all__ = ["rms_norm", "rotary_", "silu_mul"]


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    *,
    interpret: bool | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hugging Face LlamaRMSNorm of x [T, H] with weight [H] -> out [T, H].

    With residual [T, H] (x's dtype): h = x + residual (rounded to x's dtype, as torch adds),
    returns (rms_norm(h), h). h is a new tensor; x and residual are left as they were.
    out's dtype is torch.promote_types(x.dtype, weight.dtype), x's dtype when they agree.
    """
    backend = backend_for(x, interpret)
    if backend == "reference":
        return ref.rms_norm_ref(x, weight, eps, residual)
    return triton_module("fused_ops", backend).rms_norm(x, weight, eps, residual)


def rotary_(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    *,
    interpret: bool | None = None,
) -> None:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place ("rotate half", as engine.rope.RotaryEmbedding).

    cos, sin [P, D/2] float32 (RotaryEmbedding.cos / .sin); positions [T] int64, each < P.
    q and k may be views into a fused qkv output (any token and head stride, D contiguous).
    """
    backend = backend_for(q, interpret)
    if backend == "reference":
        ref.rotary_ref_(q, k, cos, sin, positions)
        return
    triton_module("fused_ops", backend).rotary_(q, k, cos, sin, positions)


def silu_mul(gate_up: torch.Tensor, *, interpret: bool | None = None) -> torch.Tensor:
    """gate_up [T, 2I] (gate | up, a fused gate_up projection) -> silu(gate) * up [T, I].

    Computed in float32 and rounded once to gate_up's dtype.
    """
    backend = backend_for(gate_up, interpret)
    if backend == "reference":
        return ref.silu_mul_ref(gate_up)
    return triton_module("fused_ops", backend).silu_mul(gate_up)
