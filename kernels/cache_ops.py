"""Triton kernels that move KV bytes: the cache write of each step, and row copies between slots.

write_kv: grid (T,), one program per new token, all its KV heads at once; for an INT8 / FP8 cache
it quantizes on the way with reference.quantize_ref's arithmetic (fp32 amax, IEEE division,
scale rounded to fp16, round-half-to-even for INT8), so the stored bytes and scales match it.

copy_rows: grid (pairs, outer, chunks) over a tensor viewed as [outer, rows, row_bytes]; a row is
a block (copy-on-write) or a slot (compaction). Sources and destinations of one call must be
disjoint: the programs run in no fixed order.

Imported lazily through kernels._dispatch.triton_module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._dispatch import triton_interprets

INTERPRETED = triton_interprets()
_TL_DTYPES = {torch.int8: tl.int8}
if hasattr(torch, "float8_e4m3fn"):
    _TL_DTYPES[torch.float8_e4m3fn] = tl.float8e4nv


@triton.jit
def _round_to_e4m3(y):
    """Round fp32 y (|y| <= 448) to the nearest e4m3 value, ties to even, staying in fp32.

    The cast to fp8 that follows is then exact on any path; Triton's interpreter rounds some
    values across a power of two wrongly (124.3 -> 64) when it converts itself.
    """
    exponent = ((y.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    ulp_exp = tl.maximum(exponent, -6) - 3  # 3 mantissa bits; below 2**-6 the subnormal step
    magic = (((ulp_exp + 23 + 127) << 23) | 0x400000).to(tl.float32, bitcast=True)  # 1.5 * 2**(ulp_exp + 23)
    r = (y + magic) - magic
    return tl.where(r == 0, y * 0.0, r)  # keep the sign of a zero, as torch's cast does


@triton.jit
def _store_row(x, dst_ptrs, scale_ptrs, mask, head_mask, QUANT_MAX: tl.constexpr, IS_INT: tl.constexpr):
    """Store x [H, D] at dst_ptrs, quantized with one scale per head when QUANT_MAX > 0."""
    if QUANT_MAX > 0:
        xf = x.to(tl.float32)
        amax = tl.max(tl.abs(xf), 1)  # [H]; padding was loaded as 0
        scale = tl.where(amax > 0, tl.math.div_rn(amax, QUANT_MAX), 1.0).to(tl.float16)
        y = tl.math.div_rn(xf, scale.to(tl.float32)[:, None])
        y = tl.minimum(tl.maximum(y, -QUANT_MAX), QUANT_MAX)
        if IS_INT:
            # Round half to even, as torch.round: adding 1.5 * 2**23 leaves no fraction bits.
            y = (y + 12582912.0) - 12582912.0
        else:
            y = _round_to_e4m3(y)
        tl.store(dst_ptrs, y.to(dst_ptrs.dtype.element_ty), mask=mask)
        tl.store(scale_ptrs, scale, mask=head_mask)
    else:
        tl.store(dst_ptrs, x.to(dst_ptrs.dtype.element_ty), mask=mask)


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kct, stride_kch, stride_vcb, stride_vct, stride_vch,
    stride_sb, stride_st, stride_sh,
    NUM_KV_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, PAGE_SIZE: tl.constexpr,
    QUANT_MAX: tl.constexpr, IS_INT: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        block = slot // PAGE_SIZE
        offset = slot % PAGE_SIZE
        h = tl.arange(0, HEADS_PAD)
        d = tl.arange(0, HEAD_DIM_PAD)
        head_mask = h < NUM_KV_HEADS
        mask = head_mask[:, None] & (d[None, :] < HEAD_DIM)
        s_ptrs = block * stride_sb + offset * stride_st + h * stride_sh
        k = tl.load(k_ptr + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask, other=0.0)
        k_dst = k_cache_ptr + block * stride_kcb + offset * stride_kct + h[:, None] * stride_kch + d[None, :]
        _store_row(k, k_dst, k_scale_ptr + s_ptrs, mask, head_mask, QUANT_MAX, IS_INT)
        v = tl.load(v_ptr + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask, other=0.0)
        v_dst = v_cache_ptr + block * stride_vcb + offset * stride_vct + h[:, None] * stride_vch + d[None, :]
        _store_row(v, v_dst, v_scale_ptr + s_ptrs, mask, head_mask, QUANT_MAX, IS_INT)


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Launcher: scatter k, v [T, Hkv, D] to flat slots [T] (-1 = skip) of [blocks, page, Hkv, D] caches."""
    num_tokens, num_kv_heads, head_dim = k.shape
    assert v.shape == k.shape and slot_mapping.shape == (num_tokens,)
    assert k_cache.shape[2:] == (num_kv_heads, head_dim) and v_cache.shape == k_cache.shape, (
        f"cache {tuple(k_cache.shape)} does not hold K/V rows {tuple(k.shape[1:])}")
    assert k.stride(2) == 1 and v.stride(2) == 1 and k_cache.stride(3) == 1 and v_cache.stride(3) == 1
    if kv_scales is not None:
        k_scale, v_scale = kv_scales
        assert k_cache.dtype in _TL_DTYPES, f"kv_scales given for a {k_cache.dtype} cache (int8 or fp8 e4m3 take scales)"
        assert k_scale.shape == k_cache.shape[:3] and v_scale.stride() == k_scale.stride()
        assert k_scale.dtype == torch.float16 and v_scale.dtype == torch.float16
        quant_max = 127.0 if k_cache.dtype == torch.int8 else 448.0
    else:
        assert k_cache.dtype.itemsize > 1, f"a {k_cache.dtype} cache needs kv_scales"
        k_scale = v_scale = k_cache  # unused
        quant_max = 0.0
    if num_tokens == 0:
        return
    launch = {} if INTERPRETED else {"num_warps": 4}
    _write_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, k_scale, v_scale, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        k_scale.stride(0), k_scale.stride(1), k_scale.stride(2),
        NUM_KV_HEADS=num_kv_heads, HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=triton.next_power_of_2(head_dim), PAGE_SIZE=k_cache.shape[1],
        QUANT_MAX=quant_max, IS_INT=k_cache.dtype == torch.int8, **launch,
    )


@triton.jit
def _copy_rows_kernel(ptr, src_ptr, dst_ptr, row_bytes, stride_outer, stride_row, BLOCK: tl.constexpr):
    pair = tl.program_id(0)
    outer = tl.program_id(1).to(tl.int64)
    chunk = tl.program_id(2)
    src = tl.load(src_ptr + pair).to(tl.int64)
    dst = tl.load(dst_ptr + pair).to(tl.int64)
    e = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = e < row_bytes
    base = ptr + outer * stride_outer
    tl.store(base + dst * stride_row + e, tl.load(base + src * stride_row + e, mask=mask), mask=mask)


def copy_rows(rows: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
    """Launcher: rows [outer, num_rows, ...] (contiguous from dim 1 on); rows[:, dst[i]] = rows[:, src[i]]."""
    assert src.shape == dst.shape and src.dim() == 1
    if src.numel() == 0:
        return
    outer, num_rows = rows.shape[:2]
    as_bytes = rows.view(outer, num_rows, -1).view(torch.uint8)  # raises unless rows[0, 0] is contiguous
    row_bytes = as_bytes.shape[2]
    block = min(4096, triton.next_power_of_2(row_bytes))
    launch = {} if INTERPRETED else {"num_warps": 4}
    _copy_rows_kernel[(src.numel(), outer, triton.cdiv(row_bytes, block))](
        as_bytes, src, dst, row_bytes, as_bytes.stride(0), as_bytes.stride(1), BLOCK=block, **launch)
