"""Fused RMSNorm / RoPE / SiLU-and-mul: Triton (interpreted) against the torch references, and the
references against the engine's current torch code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.config import PRESETS
from engine.rope import RotaryEmbedding
from kernels import _dispatch, fused
from kernels import fused_ref as ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NUM_TOKENS = [0, 1, 5]
HIDDEN = 576  # SmolLM2: not a power of two


def _close(got: torch.Tensor, want: torch.Tensor, ulps: float = 1.0) -> None:
    """fp32: ~1e-6 relative; half types: within `ulps` units of the last place (and mostly equal)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    eps = 1e-6 if want.dtype == torch.float32 else torch.finfo(want.dtype).eps * ulps
    torch.testing.assert_close(got, want, rtol=eps, atol=eps * 1e-2)
    if want.numel() and want.dtype != torch.float32:
        assert (got != want).float().mean() < 0.02, "more than 2% of the values differ"


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty returns NaN-filled floating tensors, so an element a kernel skips shows."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


# --- rms_norm -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_reference_is_hugging_face_llama_rms_norm(dtype):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(HIDDEN, generator=gen).to(dtype)
    x = (torch.randn(7, HIDDEN, generator=gen) * 3).to(dtype)
    xf = x.float()  # LlamaRMSNorm.forward, written out: normalize in fp32, cast, then scale
    expected = weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    assert torch.equal(ref.rms_norm_ref(x, weight, 1e-5), expected)


@pytest.mark.parametrize("num_tokens", NUM_TOKENS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(poisoned_empty, dtype, num_tokens, with_residual):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(num_tokens, HIDDEN, generator=gen) * 2).to(dtype)
    weight = (1 + torch.randn(HIDDEN, generator=gen) / 4).to(dtype)
    residual = torch.randn(num_tokens, HIDDEN, generator=gen).to(dtype) if with_residual else None
    before = [t.clone() for t in (x, residual) if t is not None]
    got = fused.rms_norm(x, weight, 1e-6, residual, interpret=True)
    want = ref.rms_norm_ref(x, weight, 1e-6, residual)
    if with_residual:
        (got, got_h), (want, want_h) = got, want
        assert torch.equal(got_h, x + residual)  # the residual stream h, bit for bit
        assert torch.equal(want_h, x + residual)
    _close(got, want)
    assert all(torch.equal(t, b) for t, b in zip((x, residual), before) if t is not None)  # inputs untouched


def test_rms_norm_strided_rows_and_promoted_weight():
    """Rows of a wider buffer; an fp32 weight on bf16 x gives fp32 out, as torch promotes."""
    gen = torch.Generator().manual_seed(2)
    buf = torch.randn(5, HIDDEN + 64, generator=gen).bfloat16()
    x, residual = buf[:, :HIDDEN], buf[:, 64:]
    weight = torch.randn(HIDDEN, generator=gen)
    got, got_h = fused.rms_norm(x, weight, 1e-5, residual, interpret=True)
    want, want_h = ref.rms_norm_ref(x, weight, 1e-5, residual)
    assert got.dtype == torch.float32 and torch.equal(got_h, want_h)
    torch.testing.assert_close(got, want, rtol=2 * 2**-8, atol=1e-6)  # normed may differ by a bf16 ulp


# --- rotary_ --------------------------------------------------------------------------------------

def _rope(preset: str, num_heads: int, num_kv_heads: int) -> tuple[RotaryEmbedding, int, int, int]:
    config = PRESETS[preset].replace(num_heads=num_heads, num_kv_heads=num_kv_heads)
    return RotaryEmbedding(config, max_positions=64), num_heads, num_kv_heads, config.head_dim


ROPES = [("smollm2-135m", 9, 3), ("llama-3.1-8b", 4, 2)]  # D 64 with odd head counts; D 128, Llama-3.1 scaling


def _fused_qkv(gen, num_tokens, hq, hkv, d, dtype):
    """q [T, Hq, D] and k [T, Hkv, D] as views into one qkv projection output [T, (Hq + 2 Hkv) D]."""
    qkv = (torch.randn(num_tokens, (hq + 2 * hkv) * d, generator=gen) * 2).to(dtype)
    q = qkv[:, : hq * d].view(num_tokens, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(num_tokens, hkv, d)
    return qkv, q, k


@pytest.mark.parametrize("preset,hq,hkv", ROPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_reference_is_the_engine_rope(preset, hq, hkv, dtype):
    rope, hq, hkv, d = _rope(preset, hq, hkv)
    gen = torch.Generator().manual_seed(3)
    _, q, k = _fused_qkv(gen, 6, hq, hkv, d, dtype)
    positions = torch.tensor([0, 63, 7, 7, 31, 1])
    want_q, want_k = rope(q, positions), rope(k, positions)
    ref.rotary_ref_(q, k, rope.cos, rope.sin, positions)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)


@pytest.mark.parametrize("preset,hq,hkv", ROPES)
@pytest.mark.parametrize("num_tokens", NUM_TOKENS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_matches_reference_on_fused_qkv_views(preset, hq, hkv, dtype, num_tokens):
    rope, hq, hkv, d = _rope(preset, hq, hkv)
    gen = torch.Generator().manual_seed(4)
    qkv, q, k = _fused_qkv(gen, num_tokens, hq, hkv, d, dtype)
    positions = torch.randint(0, 64, (num_tokens,), generator=gen)
    want_qkv = qkv.clone()
    want_q, want_k = want_qkv[:, : hq * d].view_as(q), want_qkv[:, hq * d : (hq + hkv) * d].view_as(k)
    ref.rotary_ref_(want_q, want_k, rope.cos, rope.sin, positions)
    fused.rotary_(q, k, rope.cos, rope.sin, positions, interpret=True)
    _close(qkv, want_qkv)  # q and k rotated, v untouched
    assert torch.equal(qkv[:, (hq + hkv) * d :], want_qkv[:, (hq + hkv) * d :])


def test_rotary_head_stride_unlike_head_dim():
    """Heads padded apart ([T, H, D + 16] sliced to D): the padding stays as it was."""
    rope, hq, hkv, d = _rope("smollm2-135m", 3, 1)
    gen = torch.Generator().manual_seed(5)
    buf = torch.randn(5, hq + hkv, d + 16, generator=gen).half()
    want = buf.clone()
    positions = torch.tensor([3, 0, 63, 9, 9])
    ref.rotary_ref_(want[:, :hq, :d], want[:, hq:, :d], rope.cos, rope.sin, positions)
    fused.rotary_(buf[:, :hq, :d], buf[:, hq:, :d], rope.cos, rope.sin, positions, interpret=True)
    _close(buf, want)
    assert torch.equal(buf[..., d:], want[..., d:])


# --- silu_mul -------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_tokens", NUM_TOKENS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [96, 1536])  # 1536 (SmolLM2): two column blocks, the second masked
def test_silu_mul_matches_reference(poisoned_empty, dtype, num_tokens, width):
    gen = torch.Generator().manual_seed(6)
    gate_up = (torch.randn(num_tokens, 2 * width, generator=gen) * 3).to(dtype)
    got = fused.silu_mul(gate_up, interpret=True)
    want = ref.silu_mul_ref(gate_up)
    _close(got, want)


def test_silu_mul_strided_rows_and_engine_semantics():
    """Rows of a wider buffer; within a rounding of the engine's F.silu(gate) * up (which rounds twice)."""
    gen = torch.Generator().manual_seed(7)
    buf = (torch.randn(5, 2 * 96 + 8, generator=gen) * 3).bfloat16()
    gate_up = buf[:, : 2 * 96]
    got = fused.silu_mul(gate_up, interpret=True)
    _close(got, ref.silu_mul_ref(gate_up))
    engine = F.silu(gate_up[:, :96]) * gate_up[:, 96:]
    torch.testing.assert_close(got, engine, rtol=2 * 2**-8, atol=1e-6)


# --- dispatch -------------------------------------------------------------------------------------

@pytest.fixture
def calls(monkeypatch):
    """Records which backend each triton_module call of kernels.fused asked for."""
    seen = []

    def spy(name, backend):
        seen.append((name, backend))
        return _dispatch.triton_module(name, backend)

    monkeypatch.setattr(fused, "triton_module", spy)
    return seen


@pytest.mark.parametrize("interpret", [None, True])
def test_dispatch(calls, monkeypatch, interpret):
    monkeypatch.delenv("KVSIM_TRITON_INTERPRET", raising=False)
    rope, hq, hkv, d = _rope("smollm2-135m", 1, 1)
    x = torch.randn(2, 64)
    fused.rms_norm(x, torch.ones(64), 1e-5, interpret=interpret)
    fused.rotary_(x.view(2, 1, 64), x.clone().view(2, 1, 64), rope.cos, rope.sin, torch.tensor([0, 1]),
                  interpret=interpret)
    fused.silu_mul(x, interpret=interpret)
    assert calls == ([] if interpret is None else [("fused_ops", "interpret")] * 3)
