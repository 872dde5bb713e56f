"""The step the paged attention kernels share: one tile of cached K/V through an online softmax.

A tile is BLOCK_N logical slots of one sequence and one KV head. Each slot's page comes from the
block table, so any page size works and a tile may span several pages. Logits are kept in base 2
(scale_log2 = softmax scale * log2(e)) so the softmax uses exp2.

INT8 / FP8 caches: K's per-slot scale multiplies the logits after the dot product (exact); V's
per-slot scale goes into the exponent of the probabilities (see attend_tile), so no tile of real
values is ever materialized and the stored codes convert to fp16 exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# INT8 -> fp16 conversions (the I8_CONVERT constexpr of attend_tile).
I8_I2F = 0    # .to(fp16): I2F, a quarter-rate instruction per value
I8_BITS = 1   # integer ops in Triton on int32 words (load_i8_as_f16)
I8_PRMT = 2   # PTX prmt, 5 instructions per 4 values: K converted in the dot's layout, V in the load's
I8_PRMT_KV = 3  # PTX prmt, K and V both converted in the load's layout (see i8_to_f16_prmt)
I8_DOT = 4    # K never converted: an int8 tensor-core dot with the query in two int8 parts
#               (query_operand makes attend_tile's q); V by PTX prmt as in I8_PRMT
I8_DOT_V_I2F = 5  # I8_DOT with V by .to(fp16): what the interpreter runs for "i8dot" (no PTX there)
I8_MODES = {"i2f": I8_I2F, "bits": I8_BITS, "prmt": I8_PRMT, "prmt_kv": I8_PRMT_KV, "i8dot": I8_DOT}
# The query's second int8 part counts units of 1/Q_LO_STEPS of the first's: |q - s1 * hi| <= s1 / 2,
# so the remainder in steps of s1 / 254 fits [-127, 127].
Q_LO_STEPS = tl.constexpr(254)
_DOT = tl.constexpr(I8_DOT)  # the jit code's copies (a kernel reads only constexpr globals)
_DOT_V_I2F = tl.constexpr(I8_DOT_V_I2F)

# x ^ 0x80 is the byte x + 128; prmt puts 0x64 above two bytes at once (the fp16 1024 + byte in
# each half; selectors 0x5140 and 0x5342 take bytes 0, 1 and 2, 3 in order) and one packed
# subtraction of 1152 (0x6480) leaves x exactly. tests/kernels checks these selectors against
# PTX's prmt rule; the GPU check in bench/kernels.py checks the compiled code.
_PRMT_BODY = ("xor.b32 t, {x}, 0x80808080; mov.b32 c, 0x64806480;"
              " prmt.b32 {lo}, t, 0x64646464, 0x5140; prmt.b32 {hi}, t, 0x64646464, 0x5342;"
              " sub.f16x2 {lo}, {lo}, c; sub.f16x2 {hi}, {hi}, c;")
PRMT_PACKED_ASM = tl.constexpr("{ .reg .b32 t, c; " + _PRMT_BODY.format(x="$2", lo="$0", hi="$1") + " }")


@triton.jit
def dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def load_i8_as_f16(words_ptr, row_off, row_mask, D: tl.constexpr):
    """Rows [N] of D int8 values as fp16 [N, D], without I2F; words_ptr points at the cache viewed
    as int32 (row_off [N] in words), byte j of word w being column 4w + j.

    I2F runs at a quarter of the ALU rate and made the INT8 kernel compute-bound. Instead, for
    each byte x of an int32 word, (x ^ 0x80) | 0x6400 is the fp16 1024 + x + 128, and
    subtracting 1152 leaves x exactly. Converting right after the load, in the load's layout,
    also lets the V tile (whose reduction dim, the tokens, is strided) be transposed as fp16 by
    ldmatrix; an int8 tile would be read back from shared memory one byte per instruction. (The
    int32 view, not a pointer cast here, lets the compiler see whole words: fewer address ops.)
    """
    w = tl.arange(0, D // 4)
    words = tl.load(words_ptr + row_off[:, None] + w[None, :], mask=row_mask[:, None], other=0)  # [N, D/4]
    u = words ^ -2139062144  # 0x80808080
    b0 = (((u & 0xFF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1152.0)
    b1 = ((((u >> 8) & 0xFF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1152.0)
    b2 = ((((u >> 16) & 0xFF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1152.0)
    b3 = ((((u >> 24) & 0xFF) | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1152.0)
    # join(join(b0, b2), join(b1, b3))[..., i, j] is b[2i + j]: row-major order b0, b1, b2, b3
    return tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), [words.shape[0], D])


@triton.jit
def i8_to_f16_prmt(x, HOIST: tl.constexpr):
    """int8 [...] -> fp16 [...], the same values, 4 at a time (PTX; GPU only).

    HOIST lets the compiler move the tile's conversion to the dot's layout before this (int8
    moves half the bytes of fp16): right for K, read along its contiguous head dim, wrong for V,
    whose tokens (the reduction dim) are strided: an int8 tile then leaves shared memory one
    byte per instruction. Marking the asm impure keeps it where it is, in the load's layout.
    """
    return tl.inline_asm_elementwise(PRMT_PACKED_ASM, "=r,=r,r", [x], dtype=tl.float16, is_pure=HOIST, pack=4)


@triton.jit
def _round_i8(x):
    """x (fp32) to the nearest int8 in [-127, 127] (halves up)."""
    r = tl.floor(x + 0.5)
    return tl.minimum(tl.maximum(r, -127.0), 127.0).to(tl.int8)


@triton.jit
def quantize_q_i8(q):
    """q [M, D] fp32 -> (hi, lo) int8 [M, D] and unit [M] fp32 with q = unit * (Q_LO_STEPS * hi + lo)
    to within unit / 2 = max|q row| / 64516 an element (fp16 keeps 11 bits of each value: this
    keeps ~16 of the row's largest, so the logits lose nothing against an fp16 dot).

    hi = round(q / s1), s1 = max|q row| / 127; lo = round((q - s1 * hi) / unit), unit = s1 / 254.
    Once per program, outside the tile loop: the INT8 K tile then goes into the tensor cores as
    it is stored (I8_DOT), and q.k = unit * (254 * dot(hi, k) + dot(lo, k)), exact in int32
    (|254 * 127 * 127 * D| + |127 * 127 * D| < 2^31 up to D = 256). An all-zero row gets unit 1.
    """
    amax = tl.max(tl.abs(q), 1)
    s1 = tl.where(amax > 0, amax / 127.0, 1.0)
    hi = _round_i8(q / s1[:, None])
    unit = s1 / Q_LO_STEPS
    lo = _round_i8((q - hi.to(tl.float32) * s1[:, None]) / unit[:, None])
    return hi, lo, unit


@triton.jit
def halves(x):
    """x [2R, C] -> (rows [0, R), rows [R, 2R)), each [R, C]. Free on an MMA tile of 16 rows
    (a thread holds rows r and r + 8)."""
    return tl.split(tl.permute(tl.reshape(x, [2, x.shape[0] // 2, x.shape[1]]), [1, 2, 0]))


@triton.jit
def twice(x):
    """x [R, C] -> [2R, C]: x's rows, then x's rows again."""
    return tl.reshape(tl.broadcast_to(x[None, :, :], [2, x.shape[0], x.shape[1]]), [2 * x.shape[0], x.shape[1]])


@triton.jit
def query_operand(q, DOT_DTYPE: tl.constexpr, I8_CONVERT: tl.constexpr, PACK: tl.constexpr = False):
    """The query [M, D] as attend_tile's Q.K^T dot takes it, once before the tile loop: in
    DOT_DTYPE, or for the int8 dot (I8_DOT) the parts of quantize_q_i8: (hi, lo, unit), or with
    PACK (q [2R, D] holding each head twice, as rows r and r + R) (hi of the first R rows above
    lo of the second [2R, D], unit [R]): one MMA of 16 rows then makes both parts' products."""
    if I8_CONVERT >= _DOT:
        hi, lo, unit = quantize_q_i8(q.to(tl.float32))
        if PACK:
            r = tl.arange(0, q.shape[0])
            unit_r = tl.max(tl.reshape(unit, [2, q.shape[0] // 2]), 0)  # rows r and r + R hold the same head
            operand = (tl.where((r < q.shape[0] // 2)[:, None], hi, lo), unit_r)
        else:
            operand = (hi, lo, unit)
    else:
        operand = q.to(DOT_DTYPE)
    return operand


@triton.jit
def _pinned(x):
    """x (fp16), unchanged, computed where it stands (PTX; GPU only).

    An impure asm is not moved across layout conversions: twice()'s copy of p then happens in
    p's own layout, before p goes through shared memory to the dot. Left to itself, the compiler
    copies in the dot operand's layout, 4 register moves per MMA (sass: 484 against 421 a loop).
    """
    return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float16, is_pure=False, pack=2)


@triton.jit
def _load_kv(ptr, off, t_mask, d, d_mask, I8_CONVERT: tl.constexpr, HOIST: tl.constexpr):
    """One K or V tile [N, D] at row offsets off [N] (elements of ptr): as stored, or INT8 as fp16
    (ptr is the cache viewed as int32 for the "bits" conversion; see words_view)."""
    mask = t_mask[:, None] & d_mask[None, :]
    if I8_CONVERT == _DOT_V_I2F:
        x = tl.load(ptr + off[:, None] + d[None, :], mask=mask, other=0).to(tl.float16)
    elif I8_CONVERT >= 2:
        x = i8_to_f16_prmt(tl.load(ptr + off[:, None] + d[None, :], mask=mask, other=0), HOIST and I8_CONVERT == 2)
    elif I8_CONVERT == 1:
        x = load_i8_as_f16(ptr, off, t_mask, d.shape[0])  # D == HEAD_DIM
    else:
        x = tl.load(ptr + off[:, None] + d[None, :], mask=mask, other=0.0)
    return x


@triton.jit
def attend_tile(
    q, m, l, acc, allowed,
    t, t_mask, d, d_mask, block_table_row, kvh,
    k_ptr, v_ptr, k_scale_ptr, v_scale_ptr,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sb, stride_st, stride_sh,
    scale_log2,
    PAGE_SIZE: tl.constexpr, QUANTIZED: tl.constexpr, Q_DTYPE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr, OFFSET_64: tl.constexpr, I8_CONVERT: tl.constexpr,
    ROW_SUMS: tl.constexpr = False, PACK: tl.constexpr = False,
):
    """q [M, D] (DOT_DTYPE), or for I8_DOT the triple of quantize_q_i8; m [M], acc [M, D] fp32;
    allowed [M, N] bool; t, t_mask [N].

    l is the softmax denominator: [M], or with ROW_SUMS its partial sums [M, N] (the caller sums
    them once at the end: a sum over the tile's slots each step is a reduction across warps).
    Returns the updated (m, l, acc) and the tile's logits [M, N] fp32 in base 2 (softmax scale *
    log2(e) * q.k, -inf where not allowed): exp2(logit - final LSE) is a slot's probability.
    m is a running max from which 2^(m + log2 l) is the sum of exp2(logit): the logits' max, or
    for a quantized cache the max of logit + e (V scale = 2^e * f, below). Every row must have an
    allowed slot in the first tile it sees, so m is finite from then on.
    """
    tu = t.to(tl.uint32)  # unsigned: division by a power-of-two page is a shift
    page = tl.load(block_table_row + (tu // PAGE_SIZE).to(tl.int32), mask=t_mask, other=0)
    if OFFSET_64:  # 32-bit offsets save registers; only caches of 2**31 elements need 64
        page = page.to(tl.int64)
    in_page = (tu % PAGE_SIZE).to(tl.int32)
    k_off = page * stride_kb + in_page * stride_kt + kvh * stride_kh
    if I8_CONVERT >= _DOT:  # K as stored, int8 x int8 -> int32 on the tensor cores (quantize_q_i8)
        k_t = tl.trans(tl.load(k_ptr + k_off[:, None] + d[None, :], mask=t_mask[:, None] & d_mask[None, :], other=0))
        if PACK:  # [2M, N]: hi's products above lo's
            q_pk, q_unit = q
            hi_k, lo_k = halves(tl.dot(q_pk, k_t, out_dtype=tl.int32))
            qk = (hi_k * Q_LO_STEPS + lo_k).to(tl.float32) * q_unit[:, None]
        else:
            q_hi, q_lo, q_unit = q
            hi_k = tl.dot(q_hi, k_t, out_dtype=tl.int32)
            qk = tl.dot(q_lo, k_t, acc=hi_k * Q_LO_STEPS, out_dtype=tl.int32).to(tl.float32) * q_unit[:, None]
    else:
        k = _load_kv(k_ptr, k_off, t_mask, d, d_mask, I8_CONVERT, True)  # [N, D], k_ptr as words_view gives it
        qk = dot(q, tl.trans(k.to(DOT_DTYPE)), IEEE)  # [M, N] fp32
    if QUANTIZED:
        s_off = page * stride_sb + in_page * stride_st + kvh * stride_sh
        k_s = tl.load(k_scale_ptr + s_off, mask=t_mask, other=0.0).to(tl.float32) * scale_log2
        qk = tl.where(allowed, qk * k_s[None, :], float("-inf"))
        # sum_n p[n] * v_s[n] * v[n]: V's scale 2^e * f (f in [1, 2)) splits in two. 2^e rides in
        # the exponent, relative to the running max of logit + e, and f multiplies the
        # probability, so the factor that meets the stored V is in [0, 2) (it rounds to Q_DTYPE
        # like p): no reduction for a tile scale, no [N, D] multiply, V's codes convert exactly.
        # e and f come from the fp32 bits (exact; a zero scale, an all-zero row, counts as 2^-24).
        v_s = tl.maximum(tl.load(v_scale_ptr + s_off, mask=t_mask, other=1.0).to(tl.float32), 5.960464477539063e-08)
        bits = v_s.to(tl.int32, bitcast=True)
        e = (bits >> 23) - 127
        f = ((bits & 0x7FFFFF) | 0x3F800000).to(tl.float32, bitcast=True)
        inv_2e = ((127 - e) << 23).to(tl.float32, bitcast=True)  # 2^-e
        w = qk + e.to(tl.float32)[None, :]
    else:
        qk = tl.where(allowed, qk * scale_log2, float("-inf"))
        w = qk
    m_new = tl.maximum(m, tl.max(w, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(w - m_new[:, None])  # [M, N]: p * 2^e for a quantized cache
    if QUANTIZED:
        p_plain = p * inv_2e[None, :]
        p = p * f[None, :]
    else:
        p_plain = p
    if ROW_SUMS:
        l = l * alpha[:, None] + p_plain
    else:
        l = l * alpha + tl.sum(p_plain, 1)
    v_off = page * stride_vb + in_page * stride_vt + kvh * stride_vh
    v = _load_kv(v_ptr, v_off, t_mask, d, d_mask, I8_CONVERT, False)  # [N, D], v_ptr as words_view gives it
    if PACK:  # the MMA's 16 rows: p twice (the copy's products are dropped)
        p2 = twice(p.to(Q_DTYPE).to(DOT_DTYPE))
        if I8_CONVERT == _DOT:  # GPU: duplicated before shared memory, not in the dot's registers
            p2 = _pinned(p2)
        pv, _ = halves(dot(p2, v.to(DOT_DTYPE), IEEE))
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


def i8_convert_mode(name: str, k_cache: torch.Tensor, v_cache: torch.Tensor, q: torch.Tensor, head_dim_pad: int,
                    interpreted: bool) -> int:
    """I8_CONVERT for attend_tile: `name` (a key of I8_MODES) where it applies, else I2F.

    The integer paths need fp16 queries and a power-of-two head dim (whole int32 words a row,
    caches that view as int32); the int8 dot a head dim from 32 (the k of an int8 MMA) to 256
    (int32 sums stay exact; quantize_q_i8), "prmt" outside. The interpreter runs no PTX, so it
    runs the PRMT modes' arithmetic as integer ops ("bits"), and I8_DOT's V conversion as .to(fp16).
    """
    if k_cache.dtype != torch.int8 or q.dtype != torch.float16 or k_cache.shape[3] != head_dim_pad:
        return I8_I2F
    mode = I8_MODES[name]
    if mode == I8_DOT and not 32 <= head_dim_pad <= 256:
        mode = I8_PRMT
    if interpreted:
        mode = {I8_PRMT: I8_BITS, I8_PRMT_KV: I8_BITS, I8_DOT: I8_DOT_V_I2F}.get(mode, mode)
    words_ok = all(c.storage_offset() % 4 == 0 and all(st % 4 == 0 for st in c.stride()[:3]) for c in (k_cache, v_cache))
    return I8_I2F if mode == I8_BITS and not words_ok else mode


def words_view(cache: torch.Tensor, i8_convert: int) -> torch.Tensor:
    """The cache as attend_tile reads it: for the "bits" conversion, int32 words
    [num_blocks, page, Hkv, D / 4]; otherwise as it is."""
    return cache.view(torch.int32) if i8_convert == I8_BITS else cache


def cache_strides(k_cache, v_cache, kv_scales) -> tuple:
    """(stride_kb, kt, kh, vb, vt, vh, sb, st, sh) for attend_tile; scale strides 0 with no scales."""
    s = kv_scales[0].stride() if kv_scales is not None else (0, 0, 0)
    return (*k_cache.stride()[:3], *v_cache.stride()[:3], *s)
