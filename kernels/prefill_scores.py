"""The attention each cached slot receives from a step's new tokens, in Triton: what H2O, TOVA and
SnapKV read from a prefill chunk (kernels/scores_ref.py holds the torch reference).

Two launches, neither with a host sync (a CUDA graph can hold both):
1. _lse_kernel: programs as prefill attention's (BLOCK_Q new tokens of one sequence x the GROUP
   query heads of one KV head, or a query-tile map), each row's log2-sum-exp2 of its logits over
   the slots it sees, into lse [T, Hq].
2. _score_kernel: one program per (sequence, KV head, tile of BLOCK_N slots): K read once, the
   sequence's queries that see the tile (all, or its last `window`) walked in tiles, and
   exp2(logit - lse) summed over them and the group's heads, added to score_out[b, kvh, slots].
   Every slot belongs to one program: no atomics, the same sums in the same order every run.
A sequence of one new token (a decode row of a mixed step) is a chunk of one query.
Logits are kept in base 2 as in attention_tile (softmax scale * log2(e) * q.k, INT8 / FP8 K's
scale applied after the dot), so both launches compute each logit the same way.

Imported lazily through kernels._dispatch.triton_module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._dispatch import triton_interprets
from kernels.attention_tile import cache_strides, dot, dot_dtype
from kernels.decode_attention import LOG2E
from kernels.prefill_attention import query_rows, query_tile
from kernels.tiles import PREFILL_BLOCK_ROWS, prefill_query_tile

INTERPRETED = triton_interprets()


@triton.jit
def _k_tile(t, t_mask, d, d_mask, table_row, kvh, k_ptr, k_scale_ptr, stride_kb, stride_kt, stride_kh,
            stride_sb, stride_st, stride_sh, scale_log2,
            PAGE_SIZE: tl.constexpr, QUANTIZED: tl.constexpr, DOT_DTYPE: tl.constexpr, OFFSET_64: tl.constexpr):
    """K of slots t [N] as dot operands [N, D], and each slot's logit factor [N] (scale_log2, times
    K's scale for a quantized cache)."""
    tu = t.to(tl.uint32)
    page = tl.load(table_row + (tu // PAGE_SIZE).to(tl.int32), mask=t_mask, other=0)
    if OFFSET_64:
        page = page.to(tl.int64)
    in_page = (tu % PAGE_SIZE).to(tl.int32)
    k = tl.load(k_ptr + (page * stride_kb + in_page * stride_kt + kvh * stride_kh)[:, None] + d[None, :],
                mask=t_mask[:, None] & d_mask[None, :], other=0).to(DOT_DTYPE)
    if QUANTIZED:
        s = tl.load(k_scale_ptr + page * stride_sb + in_page * stride_st + kvh * stride_sh, mask=t_mask, other=0.0)
        factor = s.to(tl.float32) * scale_log2
    else:
        factor = tl.zeros_like(t.to(tl.float32)) + scale_log2
    return k, factor


@triton.jit
def _lse_kernel(
    q_ptr, k_ptr, k_scale_ptr, block_tables_ptr, cu_seqlens_q_ptr, seq_lens_ptr, lse_ptr, tiles_ptr, stride_tiles,
    scale_log2, stride_qt, stride_qh, stride_btb, stride_lt,
    stride_kb, stride_kt, stride_kh, stride_sb, stride_st, stride_sh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr, OFFSET_64: tl.constexpr, TILE_MAP: tl.constexpr,
):
    b, first, valid, q_start, num_new, seq_len = query_tile(tiles_ptr, stride_tiles, cu_seqlens_q_ptr, seq_lens_ptr,
                                                           BLOCK_Q, TILE_MAP)
    kvh = tl.program_id(1)
    if valid and first < num_new:
        d = tl.arange(0, HEAD_DIM_PAD)
        d_mask = d < HEAD_DIM
        i, head, row_mask, q = query_rows(q_ptr, q_start, first, kvh, num_new, stride_qt, stride_qh, d, d_mask,
                                     GROUP, GROUP_PAD, BLOCK_Q, DOT_DTYPE)
        pos = seq_len - num_new + i  # the row's own slot: it sees slots 0 .. pos (slot 0 in the first tile)
        m = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
        kv_end = tl.minimum(seq_len, seq_len - num_new + first + BLOCK_Q)
        for t0 in range(0, kv_end, BLOCK_N):
            t = t0 + tl.arange(0, BLOCK_N)
            t_mask = t < kv_end
            k, factor = _k_tile(t, t_mask, d, d_mask, block_tables_ptr + b * stride_btb, kvh, k_ptr, k_scale_ptr,
                                stride_kb, stride_kt, stride_kh, stride_sb, stride_st, stride_sh, scale_log2,
                                PAGE_SIZE, QUANTIZED, DOT_DTYPE, OFFSET_64)
            logits = dot(q, tl.trans(k), IEEE) * factor[None, :]
            logits = tl.where((t[None, :] <= pos[:, None]) & t_mask[None, :], logits, float("-inf"))
            m_new = tl.maximum(m, tl.max(logits, 1))
            l = l * tl.exp2(m - m_new) + tl.sum(tl.exp2(logits - m_new[:, None]), 1)
            m = m_new
        tl.store(lse_ptr + (q_start + i).to(tl.int64) * stride_lt + head, m + tl.log2(l), mask=row_mask)


@triton.jit
def _score_kernel(
    q_ptr, k_ptr, k_scale_ptr, block_tables_ptr, cu_seqlens_q_ptr, seq_lens_ptr, lse_ptr, windows_ptr, score_ptr,
    scale_log2, stride_qt, stride_qh, stride_btb, stride_lt, stride_ob, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_sb, stride_st, stride_sh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr, OFFSET_64: tl.constexpr, WINDOWS: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    t0 = tl.program_id(2) * BLOCK_N
    q_start = tl.load(cu_seqlens_q_ptr + b)
    num_new = tl.load(cu_seqlens_q_ptr + b + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + b)
    if num_new > 0 and t0 < seq_len:
        d = tl.arange(0, HEAD_DIM_PAD)
        d_mask = d < HEAD_DIM
        t = t0 + tl.arange(0, BLOCK_N)
        t_mask = t < seq_len
        k, factor = _k_tile(t, t_mask, d, d_mask, block_tables_ptr + b * stride_btb, kvh, k_ptr, k_scale_ptr,
                            stride_kb, stride_kt, stride_kh, stride_sb, stride_st, stride_sh, scale_log2,
                            PAGE_SIZE, QUANTIZED, DOT_DTYPE, OFFSET_64)
        context = seq_len - num_new  # slots before the first new token
        lowest = 0  # the first new token that counts
        if WINDOWS:
            window = tl.load(windows_ptr + b)
            lowest = tl.where((window > 0) & (window < num_new), num_new - window, 0)
        # new token i sees slot t iff t <= context + i: the tile's first slot from i = t0 - context on
        start = tl.maximum(lowest, t0 - context)
        start = tl.maximum(start, 0) // BLOCK_Q * BLOCK_Q
        acc = tl.zeros([BLOCK_N], tl.float32)
        for first in range(start, num_new, BLOCK_Q):
            i, head, row_mask, q = query_rows(q_ptr, q_start, first, kvh, num_new, stride_qt, stride_qh, d, d_mask,
                                         GROUP, GROUP_PAD, BLOCK_Q, DOT_DTYPE)
            row_mask = row_mask & (i >= lowest)
            lse = tl.load(lse_ptr + (q_start + i).to(tl.int64) * stride_lt + head, mask=row_mask, other=0.0)
            logits = dot(q, tl.trans(k), IEEE) * factor[None, :]
            seen = row_mask[:, None] & t_mask[None, :] & (t[None, :] <= (context + i)[:, None])
            acc += tl.sum(tl.where(seen, tl.exp2(logits - lse[:, None]), 0.0), 0)
        out = score_ptr + b.to(tl.int64) * stride_ob + kvh * stride_oh + t
        tl.store(out, tl.load(out, mask=t_mask, other=0.0) + acc, mask=t_mask)


def paged_prefill_scores(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    score_out: torch.Tensor,
    windows: torch.Tensor | None = None,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    max_query_len: int | None = None,
    query_tiles: torch.Tensor | None = None,
    block_rows: int = PREFILL_BLOCK_ROWS,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> None:
    """Launcher; the contract of scores_ref.paged_prefill_scores_ref (score_out [B, Hkv, max_slots]
    float32, added to in place), for any mix of chunks and one-token rows. max_query_len and
    query_tiles as for prefill_attention.paged_prefill_attention (the grid of the first launch);
    the second's grid is (B, Hkv, max_slots / block_n), fixed by score_out's shape."""
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    batch = seq_lens.shape[0]
    assert num_heads == group * num_kv_heads and k_cache.shape[3] == head_dim and q.stride(2) == 1
    assert cu_seqlens_q.shape == (batch + 1,) and block_tables.shape[0] == batch
    assert score_out.shape[:2] == (batch, num_kv_heads) and score_out.dtype == torch.float32 and score_out.stride(2) == 1
    if num_tokens == 0 or batch == 0:
        return
    block_q = prefill_query_tile(num_heads, num_kv_heads, block_rows)
    lse = torch.empty(num_tokens, num_heads, dtype=torch.float32, device=q.device)
    k_scale = kv_scales[0] if kv_scales is not None else k_cache
    _, _, _, _, _, _, *scale_strides = cache_strides(k_cache, k_cache, kv_scales)
    common = dict(GROUP=group, GROUP_PAD=triton.next_power_of_2(group), HEAD_DIM=head_dim,
                  HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)), PAGE_SIZE=page_size, BLOCK_Q=block_q,
                  BLOCK_N=block_n, QUANTIZED=kv_scales is not None, DOT_DTYPE=dot_dtype(q.dtype, INTERPRETED),
                  IEEE=q.dtype == torch.float32, OFFSET_64=k_cache.numel() >= 2**31,
                  **({} if INTERPRETED else {"num_warps": num_warps, "num_stages": num_stages}))
    strides = (*k_cache.stride()[:3], *scale_strides)
    if query_tiles is not None:
        assert query_tiles.dim() == 2 and query_tiles.shape[0] == 2 and query_tiles.stride(1) == 1
        grid = (query_tiles.shape[1], num_kv_heads)
    else:
        grid = (batch, num_kv_heads, triton.cdiv(max_query_len or num_tokens, block_q))
    _lse_kernel[grid](
        q, k_cache, k_scale, block_tables, cu_seqlens_q, seq_lens, lse,
        query_tiles if query_tiles is not None else seq_lens, query_tiles.stride(0) if query_tiles is not None else 0,
        scale * LOG2E, q.stride(0), q.stride(1), block_tables.stride(0), lse.stride(0), *strides,
        TILE_MAP=query_tiles is not None, **common)
    _score_kernel[(batch, num_kv_heads, triton.cdiv(score_out.shape[2], block_n))](
        q, k_cache, k_scale, block_tables, cu_seqlens_q, seq_lens, lse,
        windows if windows is not None else seq_lens, score_out,
        scale * LOG2E, q.stride(0), q.stride(1), block_tables.stride(0), lse.stride(0),
        score_out.stride(0), score_out.stride(1), *strides, WINDOWS=windows is not None, **common)
