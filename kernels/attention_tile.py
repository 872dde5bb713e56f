"""The step the paged attention kernels share: one tile of cached K/V through an online softmax.

A tile is BLOCK_N logical slots of one sequence and one KV head. Each slot's page comes from the
block table, so any page size works and a tile may span several pages. Logits are kept in base 2
(scale_log2 = softmax scale * log2(e)) so the softmax uses exp2.

INT8 / FP8 caches: K's per-slot scale multiplies the logits after the dot product (exact); V's
per-slot scale goes into the probabilities, relative to the tile's largest scale (see below).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def load_i8_as_f16(ptr, row_off, row_mask, D: tl.constexpr):
    """Rows [N] of D int8 values at ptr + row_off (in bytes) as fp16 [N, D], without I2F.

    I2F runs at a quarter of the ALU rate and made the INT8 kernel compute-bound. Instead, for
    each byte x of an int32 word, (x ^ 0x80) | 0x6400 is the fp16 1024 + x + 128, and
    subtracting 1152 leaves x exactly. Converting right after the load, in the load's layout,
    also lets the V tile (whose reduction dim, the tokens, is strided) be transposed as fp16 by
    ldmatrix; an int8 tile would be read back from shared memory one byte per instruction.
    """
    w = tl.arange(0, D // 4)
    words = tl.load(ptr.to(tl.pointer_type(tl.int32)) + (row_off // 4)[:, None] + w[None, :],
                    mask=row_mask[:, None], other=0)  # [N, D/4], byte j of a word is column 4w + j
    u = words ^ -2139062144  # 0x80808080
    b0 = (((u & 0xFF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1152.0)
    b1 = ((((u >> 8) & 0xFF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1152.0)
    b2 = ((((u >> 16) & 0xFF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1152.0)
    b3 = ((((u >> 24) & 0xFF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1152.0)
    # join(join(b0, b2), join(b1, b3))[..., i, j] is b[2i + j]: row-major order b0, b1, b2, b3
    return tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), [words.shape[0], D])


@triton.jit
def attend_tile(
    q, m, l, acc, allowed,
    t, t_mask, d, d_mask, block_table_row, kvh,
    k_ptr, v_ptr, k_scale_ptr, v_scale_ptr,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sb, stride_st, stride_sh,
    scale_log2,
    PAGE_SIZE: tl.constexpr, QUANTIZED: tl.constexpr, Q_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr, OFFSET_64: tl.constexpr, FAST_I8: tl.constexpr,
):
    """q [M, D] (DOT_DTYPE); m, l [M], acc [M, D] fp32; allowed [M, N] bool; t, t_mask [N].

    Returns the updated (m, l, acc) and the tile's logits [M, N] fp32 in base 2 (softmax scale *
    log2(e) * q.k, -inf where not allowed): exp2(logit - final LSE) is a slot's probability.
    Every row must have an allowed slot in the first tile it sees, so m is finite from then on.
    """
    page = tl.load(block_table_row + t // PAGE_SIZE, mask=t_mask, other=0)
    if OFFSET_64:  # 32-bit offsets save registers; only caches of 2**31 elements need 64
        page = page.to(tl.int64)
    in_page = t % PAGE_SIZE
    kv_mask = t_mask[:, None] & d_mask[None, :]
    k_off = page * stride_kb + in_page * stride_kt + kvh * stride_kh
    if FAST_I8:
        k = load_i8_as_f16(k_ptr, k_off, t_mask, d.shape[0])  # [N, D] fp16, D == HEAD_DIM
    else:
        k = tl.load(k_ptr + k_off[:, None] + d[None, :], mask=kv_mask, other=0.0)  # [N, D]
    qk = dot(q, tl.trans(k.to(DOT_DTYPE)), IEEE)  # [M, N] fp32
    if QUANTIZED:
        s_off = page * stride_sb + in_page * stride_st + kvh * stride_sh
        qk = qk * tl.load(k_scale_ptr + s_off, mask=t_mask, other=0.0).to(tl.float32)[None, :]
    qk = tl.where(allowed, qk * scale_log2, float("-inf"))
    m_new = tl.maximum(m, tl.max(qk, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l = l * alpha + tl.sum(p, 1)
    v_off = page * stride_vb + in_page * stride_vt + kvh * stride_vh
    if FAST_I8:
        v = load_i8_as_f16(v_ptr, v_off, t_mask, d.shape[0])  # [N, D] fp16, D == HEAD_DIM
    else:
        v = tl.load(v_ptr + v_off[:, None] + d[None, :], mask=kv_mask, other=0.0)  # [N, D]
    if QUANTIZED:
        # sum_n p[n] * v_s[n] * v[n] = v_max * sum_n (p[n] * v_s[n] / v_max) * v[n]: the factor
        # stays in [0, 1] like p (so it rounds to Q_DTYPE no worse than p), the stored V
        # converts exactly, and no [N, D] tile of real values is materialized.
        v_s = tl.load(v_scale_ptr + s_off, mask=t_mask, other=0.0).to(tl.float32)
        v_max = tl.max(v_s, 0)
        v_max = tl.where(v_max > 0, v_max, 1.0)
        pv = dot((p * (v_s / v_max)[None, :]).to(Q_DTYPE).to(DOT_DTYPE), v.to(DOT_DTYPE), IEEE)
        pv = pv * v_max
    else:
        pv = dot(p.to(Q_DTYPE).to(DOT_DTYPE), v.to(DOT_DTYPE), IEEE)
    acc = acc * alpha[:, None] + pv
    return m_new, l, acc, qk


def dot_dtype(q_dtype, interpreted: bool):
    """Operand dtype of the kernels' dot products for queries of q_dtype (a torch dtype).

    The interpreter's dot multiplies bf16 bit patterns as integers, so there it gets fp32
    operands (rounded to bf16 first, so the arithmetic matches the GPU's).
    """
    if q_dtype == torch.float32 or (interpreted and q_dtype == torch.bfloat16):
        return tl.float32
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[q_dtype]


def q_tl_dtype(q_dtype):
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}[q_dtype]


def cache_strides(k_cache, v_cache, kv_scales) -> tuple:
    """(stride_kb, kt, kh, vb, vt, vh, sb, st, sh) for attend_tile; scale strides 0 with no scales."""
    s = kv_scales[0].stride() if kv_scales is not None else (0, 0, 0)
    return (*k_cache.stride()[:3], *v_cache.stride()[:3], *s)
