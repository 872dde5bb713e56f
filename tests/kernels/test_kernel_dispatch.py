"""The dispatcher: CUDA -> Triton, CPU -> torch reference unless the interpreter is asked for."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import _dispatch


def _decode_inputs():
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(4, 8, 1, 64, generator=gen).half()
    return (torch.randn(1, 2, 64, generator=gen).half(), k, k.clone(), torch.tensor([[2, 0]], dtype=torch.int32),
            torch.tensor([11], dtype=torch.int32), 0.125)


@pytest.fixture
def calls(monkeypatch):
    """Records which backend each triton_module call asked for."""
    seen = []
    real = _dispatch.triton_module

    def spy(name, backend):
        seen.append((name, backend))
        return real(name, backend)

    monkeypatch.setattr(kernels, "triton_module", spy)
    return seen


def test_cpu_tensors_use_the_reference(calls, monkeypatch):
    monkeypatch.delenv("KVSIM_TRITON_INTERPRET", raising=False)
    kernels.paged_decode_attention(*_decode_inputs())
    assert calls == []


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_interpreter_on_request(calls, monkeypatch, how):
    if how == "environment":
        monkeypatch.setenv("KVSIM_TRITON_INTERPRET", "1")
        kernels.paged_decode_attention(*_decode_inputs())
    else:
        kernels.paged_decode_attention(*_decode_inputs(), interpret=True)
    assert calls == [("decode_attention", "interpret")]


def test_explicit_false_beats_the_environment(calls, monkeypatch):
    monkeypatch.setenv("KVSIM_TRITON_INTERPRET", "1")
    kernels.paged_decode_attention(*_decode_inputs(), interpret=False)
    assert calls == []


def test_backend_rule():
    cpu = torch.zeros(1)
    assert _dispatch.backend_for(cpu, None) in ("reference", "interpret")
    assert _dispatch.backend_for(cpu, False) == "reference"
    assert _dispatch.backend_for(cpu, True) == "interpret"


def test_triton_runs_interpreted_in_this_process():
    assert _dispatch.triton_interprets()


def test_compiled_triton_cannot_interpret_and_says_so(monkeypatch):
    monkeypatch.setattr(_dispatch, "triton_interprets", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _dispatch.triton_module("decode_attention", "interpret")
