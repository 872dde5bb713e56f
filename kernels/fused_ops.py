"""Fused Triton kernels for a decoder layer's small element-wise steps, each one launch.

rms_norm:  grid (T,), one program per row, the whole row in one block (BLOCK = next pow2 of H);
           optionally adds the residual first and stores that sum h too (fused add + norm).
rotary_:   grid (T,), one program per token rotates all its q and k heads in place, reading the
           cos/sin row of its position once; q and k may be strided views of a fused qkv output.
silu_mul:  grid (T, column blocks): silu(gate) * up of a fused gate_up projection output.

All compute in float32 and round where kernels/fused_ref.py does; none reads a value back to the
host, and outputs have static shapes, so they can be captured in CUDA graphs.

Imported lazily through kernels._dispatch.triton_module; kernels/fused.py is the public API.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._dispatch import triton_interprets

INTERPRETED = triton_interprets()
# Triton's interpreter casts fp32 -> bf16 by truncating where the GPU rounds to nearest even;
# under it the kernels round in fp32 first (_round), so the stored bits are the GPU's.
_ROUND_BF16_BY_HAND = tl.constexpr(INTERPRETED)

# The widest rms_norm row one program holds (Llama-3 405B has 16384).
MAX_NORM_WIDTH = 16384
# silu_mul columns per program: 1024 keeps 8 fp32 elements per thread of each half at 4 warps.
SILU_BLOCK = 1024


def _launch(num_warps: int) -> dict:
    return {} if INTERPRETED else {"num_warps": num_warps}


def _norm_warps(block: int) -> int:
    """More warps for wider rows, so each thread holds at most 16 elements of a row up to 8192."""
    return 16 if block >= 8192 else 8 if block >= 2048 else 4


@triton.jit
def _round(x, dtype: tl.constexpr):
    """fp32 x rounded to dtype, ties to even, on every path (see _ROUND_BF16_BY_HAND)."""
    if _ROUND_BF16_BY_HAND and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # finite values; inf stays inf
        x = bits.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, h_ptr,
    stride_x, stride_r, stride_o, stride_h,
    width, eps,
    BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < width
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = _round(x.to(tl.float32) + r.to(tl.float32), x_ptr.dtype.element_ty)  # as torch's x + r
        tl.store(h_ptr + row * stride_h + cols, x, mask=mask)
    xf = x.to(tl.float32)
    mean_sq = tl.sum(xf * xf, 0) / width  # padding was loaded as 0
    normed = _round(xf * tl.math.rsqrt(mean_sq + eps), x_ptr.dtype.element_ty)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    out = _round(normed.to(tl.float32) * w.to(tl.float32), out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * stride_o + cols, out, mask=mask)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Launcher: x [T, H] (rows may be strided), weight [H] -> out [T, H], or (out, h) with a residual."""
    num_rows, width = x.shape
    assert weight.shape == (width,), f"weight {tuple(weight.shape)} for rows of width {width}"
    assert x.stride(1) == 1 and weight.stride(0) == 1, "rms_norm needs contiguous rows and weight"
    assert width <= MAX_NORM_WIDTH, f"rms_norm rows of width {width} (at most {MAX_NORM_WIDTH} fit one program)"
    out = torch.empty((num_rows, width), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    has_residual = residual is not None
    if has_residual:
        assert residual.shape == x.shape and residual.dtype == x.dtype and residual.stride(1) == 1, (
            f"residual {tuple(residual.shape)} {residual.dtype} for x {tuple(x.shape)} {x.dtype}")
        h = torch.empty((num_rows, width), dtype=x.dtype, device=x.device)  # [T, H] the new residual stream
    else:
        residual = h = x  # unused pointers
    if num_rows > 0:
        block = triton.next_power_of_2(width)
        _rms_norm_kernel[(num_rows,)](
            x, residual, weight, out, h,
            x.stride(0), residual.stride(0), out.stride(0), h.stride(0),
            width, eps,
            BLOCK=block, HAS_RESIDUAL=has_residual, **_launch(_norm_warps(block)),
        )
    return (out, h) if has_residual else out


@triton.jit
def _rotate_heads(ptr, stride_h, cos, sin, NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
                  HALF: tl.constexpr):
    """Rotate the NUM_HEADS rows [D] at ptr + h * stride_h in place; cos, sin [HALF] fp32."""
    h = tl.arange(0, HEADS_PAD)
    d = tl.arange(0, HALF)
    mask = (h < NUM_HEADS)[:, None]
    ptrs = ptr + h[:, None] * stride_h + d[None, :]
    x1 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptrs + HALF, mask=mask, other=0.0).to(tl.float32)
    out1 = x1 * cos[None, :] - x2 * sin[None, :]
    out2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(ptrs, _round(out1, ptr.dtype.element_ty), mask=mask)
    tl.store(ptrs + HALF, _round(out2, ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, pos_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cos, stride_sin,
    NUM_Q_HEADS: tl.constexpr, Q_HEADS_PAD: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, HALF)
    cos = tl.load(cos_ptr + pos * stride_cos + d)
    sin = tl.load(sin_ptr + pos * stride_sin + d)
    _rotate_heads(q_ptr + t * stride_qt, stride_qh, cos, sin, NUM_Q_HEADS, Q_HEADS_PAD, HALF)
    _rotate_heads(k_ptr + t * stride_kt, stride_kh, cos, sin, NUM_KV_HEADS, KV_HEADS_PAD, HALF)


def rotary_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> None:
    """Launcher: rotate q [T, Hq, D] and k [T, Hkv, D] (any token / head strides) in place.

    cos, sin [P, D/2] float32; positions [T] int (each < P: not checked, that would sync).
    """
    num_tokens, num_q_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    assert k.shape == (num_tokens, num_kv_heads, head_dim) and positions.shape == (num_tokens,), (
        f"q {tuple(q.shape)}, k {tuple(k.shape)}, positions {tuple(positions.shape)} disagree")
    assert head_dim >= 2 and head_dim & (head_dim - 1) == 0, f"head_dim {head_dim} must be a power of 2"
    assert q.stride(2) == 1 and k.stride(2) == 1, "rotary_ needs each head's D values contiguous"
    assert q.dtype == k.dtype, f"q {q.dtype} and k {k.dtype}"
    half = head_dim // 2
    assert cos.shape[1:] == (half,) and sin.shape == cos.shape and cos.stride(1) == 1 and sin.stride(1) == 1, (
        f"cos/sin tables {tuple(cos.shape)} for head_dim {head_dim} (want [P, {half}], rows contiguous)")
    assert cos.dtype == torch.float32 and sin.dtype == torch.float32
    if num_tokens == 0:
        return
    q_heads_pad = triton.next_power_of_2(num_q_heads)
    _rotary_kernel[(num_tokens,)](
        q, k, cos, sin, positions,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0), sin.stride(0),
        NUM_Q_HEADS=num_q_heads, Q_HEADS_PAD=q_heads_pad,
        NUM_KV_HEADS=num_kv_heads, KV_HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HALF=half, **_launch(4 if q_heads_pad * half <= 2048 else 8),
    )


@triton.jit
def _silu_mul_kernel(in_ptr, out_ptr, stride_in, stride_out, width, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    gate = tl.load(in_ptr + row * stride_in + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(in_ptr + row * stride_in + width + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_out + cols, _round(out, out_ptr.dtype.element_ty), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """Launcher: gate_up [T, 2I] (rows may be strided) -> silu(gate) * up [T, I] in gate_up's dtype."""
    num_rows, two_width = gate_up.shape
    assert two_width % 2 == 0 and gate_up.stride(1) == 1, (
        f"gate_up {tuple(gate_up.shape)} with strides {gate_up.stride()} (want [T, 2I], rows contiguous)")
    width = two_width // 2
    out = torch.empty((num_rows, width), dtype=gate_up.dtype, device=gate_up.device)
    if num_rows > 0 and width > 0:
        block = min(SILU_BLOCK, triton.next_power_of_2(width))
        _silu_mul_kernel[(num_rows, triton.cdiv(width, block))](
            gate_up, out, gate_up.stride(0), out.stride(0), width, BLOCK=block, **_launch(4))
    return out
