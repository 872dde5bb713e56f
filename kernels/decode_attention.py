"""Paged decode attention in Triton: one new query token per sequence against its paged KV cache.

Flash-decoding in one or two launches:
  stage 1, grid (B, Hkv, num_splits): each program takes one GQA group (all Hq / Hkv query heads
    that read one KV head) and one slice of the context, walks the slice in tiles of BLOCK_N
    tokens through the block table, and keeps an online softmax in fp32. It writes its partial
    output and log-sum-exp (base 2) to a workspace; with a single split it writes the output.
  stage 2, grid (B, Hkv, Z), only with splits or score_out left to it: program z < GROUP
    combines the splits of query head kvh * GROUP + z (all splits loaded at once, not one after
    another); with score_out, program z < the score chunks (choose_score_chunks, sized to fill
    the GPU whatever the split count) turns its chunk of the saved logits into probabilities
    with the heads' final LSEs and adds their group sum.
For score_out, stage 1 saves each logit (fp32, base 2): 4 bytes per query head and token against
the 4 * head_dim bytes of K and V the kernel reads anyway, so the scores never re-read K. (An fp16
probability relative to each tile's max halved those bytes but measured slower: stage 2's
per-token gather of the tile max cost more than it saved; PERF_NOTES.md.) With one split
(SCORES_IN_SPLIT), stage 1 knows its final LSE after its loop and makes the scores itself.

INT8 / FP8 caches are dequantized in the kernel (kernels/attention_tile.py). What runs (tiles,
split rule, INT8 conversion, where the scores are made) is kernels/decode_config.py.

Imported lazily through kernels._dispatch.triton_module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels import decode_config as dc
from kernels._dispatch import triton_interprets
from kernels.attention_tile import (
    I8_DOT,
    attend_tile,
    cache_strides,
    dot_dtype,
    i8_convert_mode,
    q_tl_dtype,
    query_operand,
    words_view,
)

INTERPRETED = triton_interprets()
LOG2E = 1.4426950408889634


@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, k_scale_ptr, v_scale_ptr, block_tables_ptr, seq_lens_ptr,
    out_ptr, part_out_ptr, part_lse_ptr, logits_ptr, score_ptr,
    scale_log2, split_len, num_splits, logits_stride, stride_scb, stride_sch,
    stride_qb, stride_qh, stride_btb, stride_ob, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sb, stride_st, stride_sh,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
    QUANTIZED: tl.constexpr, DIRECT_OUT: tl.constexpr, WRITE_PROBS: tl.constexpr,
    Q_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr, OFFSET_64: tl.constexpr,
    I8_CONVERT: tl.constexpr, ROW_SUMS: tl.constexpr, SCORES_HERE: tl.constexpr, SCORE_BLOCK: tl.constexpr,
    GROUP_SCORES: tl.constexpr, PACK: tl.constexpr = False,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    start = split * split_len
    # The last split runs to the end, so a split_len chosen from a short hint still covers all.
    end = tl.where(split == num_splits - 1, seq_len, tl.minimum(start + split_len, seq_len))

    g = tl.arange(0, GROUP_PAD)
    head = kvh * GROUP + g  # [G] the query heads of this KV head
    head_mask = g < GROUP
    d = tl.arange(0, HEAD_DIM_PAD)
    d_mask = d < HEAD_DIM
    if PACK:  # the int8 dot's query: each head twice, as rows r and r + GROUP_PAD (query_operand)
        q_row = tl.arange(0, 2 * GROUP_PAD) % GROUP_PAD
    else:
        q_row = g
    q = tl.load(q_ptr + b * stride_qb + (kvh * GROUP + q_row)[:, None] * stride_qh + d[None, :],
                mask=(q_row < GROUP)[:, None] & d_mask[None, :], other=0.0)  # [G or 2G, D]
    q = query_operand(q, DOT_DTYPE, I8_CONVERT, PACK)  # in DOT_DTYPE, or int8 parts and a row unit
    head_row = (b * NUM_HEADS + head).to(tl.int64)  # [G]

    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    if ROW_SUMS:  # per-slot partial sums, added up once after the loop (attend_tile)
        l = tl.zeros([GROUP_PAD, BLOCK_N], tl.float32)
    else:
        l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
    for t0 in range(start, end, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)  # logical slots [N]
        t_mask = t < end
        m, l, acc, logit = attend_tile(
            q, m, l, acc, t_mask[None, :],
            t, t_mask, d, d_mask, block_tables_ptr + b * stride_btb, kvh,
            k_ptr, v_ptr, k_scale_ptr, v_scale_ptr,
            stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sb, stride_st, stride_sh,
            scale_log2, PAGE_SIZE, QUANTIZED, Q_DTYPE, DOT_DTYPE, IEEE, OFFSET_64, I8_CONVERT, ROW_SUMS, PACK)
        if WRITE_PROBS:
            tl.store(logits_ptr + head_row[:, None] * logits_stride + t[None, :], logit,
                     mask=head_mask[:, None] & t_mask[None, :])
    if ROW_SUMS:
        l = tl.sum(l, 1)

    l_safe = tl.where(l > 0, l, 1.0)
    o = acc / l_safe[:, None]
    row = (b * NUM_HEADS + head) * num_splits + split  # [G] workspace rows
    # Heads to store: the group, or none for an empty split (the reduce reads only full ones).
    # (A vector compare, as the interpreter cannot broadcast a scalar bool into a mask.)
    live = g < tl.where(start < end, GROUP, 0)
    if DIRECT_OUT:
        tl.store(out_ptr + b * stride_ob + head[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=head_mask[:, None] & d_mask[None, :])
    else:
        tl.store(part_out_ptr + row[:, None] * HEAD_DIM + d[None, :], o, mask=live[:, None] & d_mask[None, :])
    if SCORES_HERE:
        # One split: this program's LSE is final, so it turns its own logits (just written, still
        # in L2 for the most part) into scores; no second launch. The barrier makes the other
        # threads' logit stores visible.
        tl.debug_barrier()
        gs = tl.arange(0, GROUP_SCORES)
        lse = tl.sum(tl.where(gs[:, None] == g[None, :], (m + tl.log2(l_safe))[None, :], 0.0), 1)  # [GS]
        add_scores(logits_ptr, (b * NUM_HEADS + kvh * GROUP).to(tl.int64), logits_stride, lse, start, end,
                   score_ptr + b * stride_scb + kvh * stride_sch, GROUP, GROUP_SCORES, SCORE_BLOCK)
    elif (not DIRECT_OUT) or WRITE_PROBS:
        tl.store(part_lse_ptr + row, m + tl.log2(l_safe), mask=live)


@triton.jit
def add_scores(logits_ptr, first_row, logits_stride, lse, t_start, t_end, score_row_ptr,
               GROUP: tl.constexpr, GROUP_SCORES: tl.constexpr, SCORE_BLOCK: tl.constexpr):
    """score[t] += sum over the group's heads of exp2(logit[head, t] - lse[head]), t in [t_start, t_end).

    first_row (int64) the logits' row of the group's first head; lse [GROUP_SCORES] the heads'
    final base-2 LSEs (GROUP_SCORES = next power of two >= GROUP: no dot here, so no padding to 16
    rows, which would issue four times the loads for a group of 4).
    """
    g = tl.arange(0, GROUP_SCORES)
    rows = first_row + g  # [GS]
    for t0 in range(t_start, t_end, SCORE_BLOCK):
        t = t0 + tl.arange(0, SCORE_BLOCK)
        mask = (g < GROUP)[:, None] & (t < t_end)[None, :]
        logit = tl.load(logits_ptr + rows[:, None] * logits_stride + t[None, :], mask=mask, other=float("-inf"))
        prob = tl.sum(tl.exp2(logit - lse[:, None]), 0)  # [T] group sum
        ptr = score_row_ptr + t
        tl.store(ptr, tl.load(ptr, mask=t < t_end, other=0.0) + prob, mask=t < t_end)


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, seq_lens_ptr, out_ptr, logits_ptr, score_ptr,
    split_len, num_splits, score_chunk, num_score_chunks, logits_stride,
    stride_ob, stride_oh, stride_scb, stride_sch,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_SCORES: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
    SCORE_BLOCK: tl.constexpr, REDUCE_OUT: tl.constexpr, SCORES: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    z = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + b)
    num_valid = tl.minimum((seq_len + split_len - 1) // split_len, num_splits)
    s = tl.arange(0, SPLITS_PAD)

    if REDUCE_OUT:
        if z < GROUP:  # output of query head kvh * GROUP + z
            head = kvh * GROUP + z
            row = (b * NUM_HEADS + head) * num_splits
            lse = tl.load(part_lse_ptr + row + s, mask=s < num_valid, other=float("-inf"))  # [S]
            m = tl.max(lse, 0)
            m = tl.where(m > float("-inf"), m, 0.0)  # no valid split: weights 0, no NaN
            total = tl.sum(tl.exp2(lse - m), 0)
            d = tl.arange(0, HEAD_DIM_PAD)
            acc = tl.zeros([HEAD_DIM_PAD], tl.float32)
            for s0 in range(0, num_valid, SPLIT_BLOCK):  # one pass unless > SPLIT_BLOCK splits
                sb = s0 + tl.arange(0, SPLIT_BLOCK)
                w = tl.exp2(tl.load(part_lse_ptr + row + sb, mask=sb < num_valid, other=float("-inf")) - m)
                o = tl.load(part_out_ptr + (row + sb)[:, None] * HEAD_DIM + d[None, :],
                            mask=(sb < num_valid)[:, None] & (d < HEAD_DIM)[None, :], other=0.0)  # [SB, D]
                acc += tl.sum(w[:, None] * o, 0)
            acc = acc / tl.where(total > 0, total, 1.0)
            tl.store(out_ptr + b * stride_ob + head * stride_oh + d, acc.to(out_ptr.dtype.element_ty),
                     mask=d < HEAD_DIM)

    if SCORES:
        if z < num_score_chunks:
            g = tl.arange(0, GROUP_SCORES)
            first_row = (b * NUM_HEADS + kvh * GROUP).to(tl.int64)
            lse = tl.load(part_lse_ptr + ((first_row + g) * num_splits)[:, None] + s[None, :],
                          mask=(g < GROUP)[:, None] & (s[None, :] < num_valid), other=float("-inf"))
            m = tl.max(lse, 1)
            m = tl.where(m > float("-inf"), m, 0.0)
            total = tl.sum(tl.exp2(lse - m[:, None]), 1)
            lse_final = m + tl.log2(tl.where(total > 0, total, 1.0))  # [G]; rows with no slots read none
            t_start = z * score_chunk
            t_end = tl.where(z == num_score_chunks - 1, seq_len, tl.minimum(t_start + score_chunk, seq_len))
            add_scores(logits_ptr, first_row, logits_stride, lse_final, t_start, t_end,
                       score_ptr + b * stride_scb + kvh * stride_sch, GROUP, GROUP_SCORES, SCORE_BLOCK)


_UNUSED: dict = {}


def _workspace(numel: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scratch memory, uninitialized (the tests fill it with NaN to prove nothing unwritten is read).

    CUDA graphs: a fresh torch.empty on every call, never a buffer cached here. Under capture the
    caching allocator serves it from the graph's memory pool, which keeps it for the graph's
    lifetime (replays reuse the same addresses; graphs sharing a pool replay one at a time, as
    any activation). A buffer cached by size would be replaced, and freed, by a later larger call
    while a captured graph still wrote into it. The one cached tensor is the empty one: an unused
    buffer costs no allocation (host time on every eager call).
    """
    if numel == 0:
        key = (device, dtype)
        if key not in _UNUSED:
            _UNUSED[key] = torch.empty(0, dtype=dtype, device=device)
        return _UNUSED[key]
    return torch.empty(numel, dtype=dtype, device=device)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    score_out: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    max_seq_len: int | None = None,
    config: dc.DecodeConfig | None = None,
    num_sms: int = 132,
) -> torch.Tensor:
    """Launcher; same contract as reference.paged_decode_attention_ref.

    q [B, Hq, D]; k_cache, v_cache [num_blocks, page, Hkv, D]; block_tables [B, max_blocks] int32;
    seq_lens [B] int32; kv_scales (k_scale, v_scale) [num_blocks, page, Hkv] fp16 for INT8/FP8;
    score_out [B, Hkv, >= max seq_len] fp32, added to. max_seq_len (optional; it must bound every
    seq_len) sizes the split count and the scores' scratch; num_splits forces the split count.
    Returns out [B, Hq, D] in q's dtype. Host work only (no GPU sync, shapes from the arguments'
    shapes and host ints): safe to capture in a CUDA graph (see _workspace).
    """
    batch, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert num_heads == group * num_kv_heads, f"Hq={num_heads} is not a multiple of Hkv={num_kv_heads}"
    assert k_cache.shape == v_cache.shape and k_cache.shape[3] == head_dim, (
        f"k_cache {tuple(k_cache.shape)} / v_cache {tuple(v_cache.shape)} do not fit q {tuple(q.shape)}")
    assert q.stride(2) == 1 and k_cache.stride(3) == 1 and v_cache.stride(3) == 1, "head_dim must be contiguous"
    assert block_tables.shape[0] == batch and seq_lens.shape == (batch,)
    quantized = kv_scales is not None
    if quantized:
        k_scale, v_scale = kv_scales
        assert k_scale.shape == k_cache.shape[:3] and k_scale.stride() == v_scale.stride()
        assert k_cache.dtype.itemsize == 1, f"kv_scales given for a {k_cache.dtype} cache"
    else:
        assert k_cache.dtype == q.dtype, f"q is {q.dtype} but the cache is {k_cache.dtype} with no kv_scales"
        k_scale = v_scale = k_cache  # unused
    cfg = config or dc.default_config(head_dim, k_cache.dtype)
    capacity = block_tables.shape[1] * page_size  # no sequence is longer
    context = max(1, min(max_seq_len or capacity, capacity))
    if num_splits is None:
        num_splits = dc.choose_num_splits(batch, num_kv_heads, context, num_sms, cfg.block_n, cfg.programs_per_sm,
                                          cfg.min_split_tiles)
    split_len = dc.split_length(context, num_splits, cfg.block_n)
    num_splits = triton.cdiv(context, split_len)

    out = torch.empty_like(q) if out is None else out
    assert out.shape == q.shape and out.stride(2) == 1
    direct = num_splits == 1
    scores = score_out is not None
    scores_here = scores and direct and dc.SCORES_IN_SPLIT
    stage2 = not direct or (scores and not scores_here)
    dev = q.device
    part_out = _workspace(0 if direct else batch * num_heads * num_splits * head_dim, dev)  # [B, Hq, S, D]
    part_lse = _workspace(batch * num_heads * num_splits if stage2 else 0, dev)  # [B, Hq, S]
    # Logits per (sequence, query head, slot): as long as the table, or the caller's bound.
    logits_len = context if max_seq_len else capacity
    logits = _workspace(batch * num_heads * logits_len if scores else 0, dev)  # [B, Hq, logits_len]
    if scores:
        assert score_out.dtype == torch.float32 and score_out.shape[:2] == (batch, num_kv_heads)
        assert score_out.stride(2) == 1
        score_ptr, score_strides = score_out, score_out.stride()[:2]
    else:
        score_ptr, score_strides = part_lse, (0, 0)

    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    i8 = i8_convert_mode(dc.INT8_CONVERT, k_cache, v_cache, q, head_dim_pad, INTERPRETED)
    # Softmax rows: the group padded to an MMA's 16 rows, or for the int8 dot with a group of up
    # to 8, 8 rows, the MMA's 16 holding both parts of the query (attention_tile.query_operand).
    pack = i8 >= I8_DOT and group <= 8
    group_pad = 8 if pack else max(16, triton.next_power_of_2(group))
    k_in, v_in = words_view(k_cache, i8), words_view(v_cache, i8)
    launch = {} if INTERPRETED else {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_in, v_in, k_scale, v_scale, block_tables, seq_lens,
        out, part_out, part_lse, logits, score_ptr,
        scale * LOG2E, split_len, num_splits, logits_len, *score_strides,
        q.stride(0), q.stride(1), block_tables.stride(0), out.stride(0), out.stride(1),
        *cache_strides(k_in, v_in, kv_scales),
        NUM_HEADS=num_heads, GROUP=group, GROUP_PAD=group_pad,
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
        PAGE_SIZE=page_size, BLOCK_N=cfg.block_n,
        QUANTIZED=quantized, DIRECT_OUT=direct, WRITE_PROBS=scores,
        Q_DTYPE=q_tl_dtype(q.dtype), DOT_DTYPE=dot_dtype(q.dtype, INTERPRETED), IEEE=q.dtype == torch.float32,
        OFFSET_64=max(k_cache.numel(), v_cache.numel()) >= 2**31, I8_CONVERT=i8,
        ROW_SUMS=cfg.row_sums, SCORES_HERE=scores_here, SCORE_BLOCK=dc.SCORE_BLOCK,
        GROUP_SCORES=triton.next_power_of_2(group), PACK=pack, **launch,
    )
    if not stage2:
        return out
    num_chunks = dc.choose_score_chunks(batch, num_kv_heads, context, num_sms) if scores else 0
    score_chunk = triton.cdiv(triton.cdiv(context, max(num_chunks, 1)), dc.SCORE_BLOCK) * dc.SCORE_BLOCK
    num_chunks = triton.cdiv(context, score_chunk) if scores else 0
    splits_pad = max(2, triton.next_power_of_2(num_splits))
    _decode_reduce_kernel[(batch, num_kv_heads, max(num_chunks, 0 if direct else group))](
        part_out, part_lse, seq_lens, out, logits, score_ptr,
        split_len, num_splits, score_chunk, num_chunks, logits_len,
        out.stride(0), out.stride(1), *score_strides,
        NUM_HEADS=num_heads, GROUP=group, GROUP_SCORES=triton.next_power_of_2(group),
        HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, SPLITS_PAD=splits_pad, SPLIT_BLOCK=min(32, splits_pad),
        SCORE_BLOCK=dc.SCORE_BLOCK, REDUCE_OUT=not direct, SCORES=scores,
        **({} if INTERPRETED else {"num_warps": 4}),
    )
    return out
