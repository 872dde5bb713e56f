"""Paged prefill attention in Triton: chunks of new tokens against their paged cache, causally.

The new tokens' K/V are already in the cache (the cache write runs first), so one kernel covers
a cached prefix, earlier chunks of a chunked prefill and the chunk itself. A program
takes BLOCK_Q new tokens of one sequence (a query tile) and all GROUP query heads of one KV
head as BLOCK_Q * GROUP_PAD rows, so each K/V tile is read once for the group, and walks the
cache up to its last query's slot through the block table. Grid (B, Hkv, tiles of the longest
chunk), or, with a query-tile map (what a CUDA graph needs: a grid that does not depend on the
chunks), (tiles in the map, Hkv): entry j = (sequence, first new token) of tile j, -1 = none.

Imported lazily through kernels._dispatch.triton_module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._dispatch import triton_interprets
from kernels.attention_tile import attend_tile, cache_strides, dot_dtype, q_tl_dtype
from kernels.decode_attention import LOG2E
from kernels.tiles import PREFILL_BLOCK_ROWS, prefill_query_tile

INTERPRETED = triton_interprets()


@triton.jit
def query_tile(tiles_ptr, stride_tiles, cu_seqlens_q_ptr, seq_lens_ptr, BLOCK_Q: tl.constexpr, TILE_MAP: tl.constexpr):
    """This program's (sequence b, first new token, valid) from the query-tile map (tiles_ptr
    [2, stride_tiles]: sequence, -1 for padding, then first new token) at program_id(0), or the
    grid's (program_id(0), program_id(2) * BLOCK_Q); with b's first token in q, its new tokens and
    its slots (new ones included)."""
    if TILE_MAP:
        tile = tl.program_id(0)
        b = tl.load(tiles_ptr + tile)
        first = tl.load(tiles_ptr + stride_tiles + tile)
        valid = b >= 0
        b = tl.maximum(b, 0)
    else:
        b = tl.program_id(0)
        first = tl.program_id(2) * BLOCK_Q
        valid = b >= 0  # always; a tensor as in the map's branch (what the caller's `and` takes)
    q_start = tl.load(cu_seqlens_q_ptr + b)
    return b, first, valid, q_start, tl.load(cu_seqlens_q_ptr + b + 1) - q_start, tl.load(seq_lens_ptr + b)


@triton.jit
def query_rows(q_ptr, q_start, first, kvh, num_new, stride_qt, stride_qh, d, d_mask,
               GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """A program's rows: new tokens first .. first + BLOCK_Q of a sequence x the GROUP query heads of
    KV head kvh (padded to GROUP_PAD) -> (new token i [R], query head [R], row mask [R], q [R, D])."""
    r = tl.arange(0, BLOCK_Q * GROUP_PAD)
    i = first + r // GROUP_PAD
    head = kvh * GROUP + r % GROUP_PAD
    row_mask = (i < num_new) & (r % GROUP_PAD < GROUP)
    q = tl.load(q_ptr + (q_start + i)[:, None].to(tl.int64) * stride_qt + head[:, None] * stride_qh + d[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0).to(DOT_DTYPE)
    return i, head, row_mask, q


@triton.jit
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, k_scale_ptr, v_scale_ptr, block_tables_ptr, cu_seqlens_q_ptr, seq_lens_ptr, out_ptr,
    tiles_ptr, stride_tiles, scale_log2, stride_qt, stride_qh, stride_btb, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sb, stride_st, stride_sh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
    QUANTIZED: tl.constexpr, Q_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr,
    OFFSET_64: tl.constexpr, I8_CONVERT: tl.constexpr, TILE_MAP: tl.constexpr,
):
    b, first, valid, q_start, num_new, seq_len = query_tile(tiles_ptr, stride_tiles, cu_seqlens_q_ptr, seq_lens_ptr,
                                                           BLOCK_Q, TILE_MAP)
    kvh = tl.program_id(1)
    if valid and first < num_new:
        d = tl.arange(0, HEAD_DIM_PAD)
        d_mask = d < HEAD_DIM
        i, head, row_mask, q = query_rows(q_ptr, q_start, first, kvh, num_new, stride_qt, stride_qh, d, d_mask,
                                          GROUP, GROUP_PAD, BLOCK_Q, DOT_DTYPE)  # q [R, D]
        pos = seq_len - num_new + i  # the row's own slot: it sees slots 0 .. pos
        mask = row_mask[:, None] & d_mask[None, :]
        m = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
        l = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
        acc = tl.zeros([BLOCK_Q * GROUP_PAD, HEAD_DIM_PAD], tl.float32)
        kv_end = tl.minimum(seq_len, seq_len - num_new + first + BLOCK_Q)
        for t0 in range(0, kv_end, BLOCK_N):
            t = t0 + tl.arange(0, BLOCK_N)
            t_mask = t < kv_end
            m, l, acc, _ = attend_tile(
                q, m, l, acc, (t[None, :] <= pos[:, None]) & t_mask[None, :],
                t, t_mask, d, d_mask, block_tables_ptr + b * stride_btb, kvh,
                k_ptr, v_ptr, k_scale_ptr, v_scale_ptr,
                stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_sb, stride_st, stride_sh,
                scale_log2, PAGE_SIZE, QUANTIZED, Q_DTYPE, DOT_DTYPE, IEEE, OFFSET_64, I8_CONVERT)
        o = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out_ptr + (q_start + i)[:, None].to(tl.int64) * stride_ot + head[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=mask)


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
    query_tiles: torch.Tensor | None = None,
    block_rows: int = PREFILL_BLOCK_ROWS,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """Launcher; same contract as reference.paged_prefill_attention_ref.

    q [T, Hq, D]; cu_seqlens_q [B + 1] int32; seq_lens [B] int32 (slots including the new ones).
    max_query_len (optional, >= the most new tokens of any sequence) trims the grid; without it
    the grid assumes one sequence might hold all T tokens. query_tiles [2, N] int32 (optional;
    prefill_query_tiles builds it for tiles of prefill_query_tile(Hq, Hkv) tokens) replaces both:
    grid (N, Hkv), whatever the chunks. Returns out [T, Hq, D] in q's dtype.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    batch = seq_lens.shape[0]
    assert num_heads == group * num_kv_heads and k_cache.shape == v_cache.shape and k_cache.shape[3] == head_dim
    assert cu_seqlens_q.shape == (batch + 1,) and block_tables.shape[0] == batch
    assert q.stride(2) == 1 and k_cache.stride(3) == 1 and v_cache.stride(3) == 1
    if kv_scales is None:
        assert k_cache.dtype == q.dtype, f"q is {q.dtype} but the cache is {k_cache.dtype} with no kv_scales"
    out = torch.empty_like(q) if out is None else out
    if num_tokens == 0 or batch == 0:
        return out
    block_q = prefill_query_tile(num_heads, num_kv_heads, block_rows)
    rows = max_query_len or num_tokens
    if query_tiles is not None:
        assert query_tiles.dim() == 2 and query_tiles.shape[0] == 2 and query_tiles.stride(1) == 1
        grid = (query_tiles.shape[1], num_kv_heads)
    else:
        grid = (batch, num_kv_heads, triton.cdiv(rows, block_q))
    k_scale, v_scale = kv_scales if kv_scales is not None else (k_cache, v_cache)
    launch = {} if INTERPRETED else {"num_warps": num_warps, "num_stages": num_stages}
    _prefill_kernel[grid](
        q, k_cache, v_cache, k_scale, v_scale, block_tables, cu_seqlens_q, seq_lens, out,
        query_tiles if query_tiles is not None else seq_lens, query_tiles.stride(0) if query_tiles is not None else 0,
        scale * LOG2E, q.stride(0), q.stride(1), block_tables.stride(0), out.stride(0), out.stride(1),
        *cache_strides(k_cache, v_cache, kv_scales),
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        PAGE_SIZE=page_size, BLOCK_Q=block_q, BLOCK_N=block_n,
        QUANTIZED=kv_scales is not None, Q_DTYPE=q_tl_dtype(q.dtype), DOT_DTYPE=dot_dtype(q.dtype, INTERPRETED),
        # INT8 by I2F: decode's conversions (attention_tile.I8_MODES, the int8 dot too) are
        # checked and tuned by bench/kernels.py for decode only.
        IEEE=q.dtype == torch.float32, OFFSET_64=max(k_cache.numel(), v_cache.numel()) >= 2**31, I8_CONVERT=0,
        TILE_MAP=query_tiles is not None, **launch,
    )
    return out
