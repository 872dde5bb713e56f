"""kvsim kernels: paged attention, the KV cache write and block copies, each beside a torch reference.

Public functions dispatch on the tensors they get (see kernels/_dispatch.py):
  CUDA tensors -> compiled Triton kernels;
  CPU tensors  -> the torch reference (kernels/reference.py), or the Triton kernels under
                  Triton's interpreter with `interpret=True` or KVSIM_TRITON_INTERPRET=1.

Cache layout per layer: K, V [num_blocks, page, Hkv, D]; INT8 / FP8 e4m3 caches carry
kv_scales = (k_scale, v_scale), each [num_blocks, page, Hkv] float16 (real value = stored * scale).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernels import decode_config
from kernels import reference as ref
from kernels._dispatch import (
    backend_for,
    interpret_requested,
    num_sms,
    prefer_interpreter_on_cpu_only_hosts,
    triton_module,
)

prefer_interpreter_on_cpu_only_hosts()

KVScales = tuple[torch.Tensor, torch.Tensor]

__all__ = ["paged_decode_attention", "decode_num_splits", "paged_prefill_attention", "paged_prefill_scores", "write_kv",
           "copy_blocks", "move_slots", "swap_blocks", "PREFILL_IMPL"]

# What paged_prefill_attention runs on CUDA: "triton" (kernels/prefill_attention.py) or "sdpa"
# (gather each sequence's pages, then torch SDPA). bench/kernels.py times both; on the H100 the
# Triton kernel took 0.47 / 0.90 / 0.28 ms where gather + SDPA took 2.0 / 2.5 / 6.8 ms.
PREFILL_IMPL = "triton"


def _int32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.int32 else x.to(torch.int32)


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    kv_scales: KVScales | None = None,
    score_out: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    max_seq_len: int | None = None,
    num_splits: int | None = None,
    interpret: bool | None = None,
) -> torch.Tensor:
    """One query token per sequence against its paged cache -> [B, Hq, D] in q's dtype.

    q [B, Hq, D]; block_tables [B, max_blocks]; seq_lens [B] (valid slots are [0, seq_len));
    score_out [B, Hkv, max_slots] float32, if given, gets each slot's attention probability,
    summed over the query heads of its group, added in place (H2O, TOVA). max_seq_len (a host
    int >= every seq_len) only guides the split-K count; num_splits forces it.
    """
    backend = backend_for(q, interpret)
    if backend == "reference":
        result = ref.paged_decode_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, scale,
                                                kv_scales, score_out)
        return _into(out, result)
    return triton_module("decode_attention", backend).paged_decode_attention(
        q, k_cache, v_cache, _int32(block_tables), _int32(seq_lens), scale, kv_scales, score_out,
        out=out, num_splits=num_splits, max_seq_len=max_seq_len, num_sms=num_sms(q.device))


def decode_num_splits(batch: int, num_kv_heads: int, context_tokens: int, head_dim: int, kv_dtype: torch.dtype,
                      device: torch.device | str, *, interpret: bool | None = None) -> int:
    """The split-K count paged_decode_attention picks by itself (context_tokens: the longest
    sequence, or the block table's width * page size). Host ints only: a caller capturing CUDA
    graphs computes it per batch size and table width and passes it as num_splits. 1 where the
    torch reference runs (it has no splits)."""
    device = torch.device(device)
    if device.type != "cuda" and not interpret_requested(interpret):
        return 1
    return decode_config.decode_num_splits(batch, num_kv_heads, context_tokens, head_dim, kv_dtype, num_sms(device))


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    kv_scales: KVScales | None = None,
    *,
    out: torch.Tensor | None = None,
    max_query_len: int | None = None,
    query_tiles: torch.Tensor | None = None,
    interpret: bool | None = None,
) -> torch.Tensor:
    """Causal attention of new tokens q [T, Hq, D] whose K/V are already in the cache -> [T, Hq, D].

    cu_seqlens_q [B + 1] offsets of each sequence's new tokens in q; seq_lens [B] slots per
    sequence including the new ones, which sit at its last slots (a cached prefix or earlier
    chunks fill the rest). max_query_len (host int) only trims the Triton grid; query_tiles
    [2, N] int32 (kernels.tiles.prefill_query_tiles, padded with -1) fixes it to N tiles whatever
    the chunks (CUDA graphs). Neither changes the result; the torch paths ignore both.
    """
    backend = backend_for(q, interpret)
    if backend == "reference":
        return _into(out, ref.paged_prefill_attention_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q,
                                                          seq_lens, scale, kv_scales))
    if backend == "triton" and PREFILL_IMPL == "sdpa":
        return _into(out, ref.paged_prefill_attention_sdpa(q, k_cache, v_cache, block_tables, cu_seqlens_q,
                                                           seq_lens, scale, kv_scales))
    return triton_module("prefill_attention", backend).paged_prefill_attention(
        q, k_cache, v_cache, _int32(block_tables), _int32(cu_seqlens_q), _int32(seq_lens), scale, kv_scales,
        out=out, max_query_len=max_query_len, query_tiles=None if query_tiles is None else _int32(query_tiles))


def paged_prefill_scores(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    score_out: torch.Tensor,
    windows: torch.Tensor | None = None,
    kv_scales: KVScales | None = None,
    *,
    max_query_len: int | None = None,
    query_tiles: torch.Tensor | None = None,
    interpret: bool | None = None,
) -> None:
    """Add to score_out [B, Hkv, max_slots] (float32) the causal attention probability each slot
    gets from the step's new tokens (prefill chunks and one-token rows alike), summed over those
    queries and over the query heads of its group; windows [B]: only each sequence's last
    windows[b] queries count (0: all). Arguments otherwise as paged_prefill_attention's. Triton:
    two launches, no host sync (kernels/prefill_scores.py); the torch path: scores_ref.paged_step_scores."""
    backend = backend_for(q, interpret)
    if backend == "reference":
        from kernels.scores_ref import paged_step_scores

        paged_step_scores(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale, score_out, windows,
                          kv_scales)
        return
    triton_module("prefill_scores", backend).paged_prefill_scores(
        q, k_cache, _int32(block_tables), _int32(cu_seqlens_q), _int32(seq_lens), scale, score_out,
        None if windows is None else _int32(windows), kv_scales, max_query_len=max_query_len,
        query_tiles=None if query_tiles is None else _int32(query_tiles))


def write_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kv_scales: KVScales | None = None,
    *,
    interpret: bool | None = None,
) -> None:
    """Store new K/V [T, Hkv, D] at flat slots [T] (block * page + offset; -1 = skip).

    For an INT8 / FP8 cache pass kv_scales: rows are quantized as reference.quantize_ref does.
    """
    backend = backend_for(k_cache, interpret)
    if backend == "reference":
        ref.write_kv_ref(k, v, k_cache, v_cache, slot_mapping, kv_scales)
        return
    triton_module("cache_ops", backend).write_kv(k, v, k_cache, v_cache, slot_mapping, kv_scales)


def _pairs(src_dst: torch.Tensor | Sequence[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = torch.as_tensor(src_dst, dtype=torch.int64).reshape(-1, 2).to(device)
    return pairs[:, 0].contiguous(), pairs[:, 1].contiguous()


def _copy_rows(rows: Sequence[torch.Tensor], src: torch.Tensor, dst: torch.Tensor, interpret: bool | None) -> None:
    for r in rows:
        backend = backend_for(r, interpret)
        if backend == "reference":
            ref.copy_rows_ref(r, src, dst)
        else:
            triton_module("cache_ops", backend).copy_rows(r, src.to(r.device), dst.to(r.device))


def copy_blocks(
    caches: Sequence[torch.Tensor],
    src_dst: torch.Tensor | Sequence[tuple[int, int]],
    *,
    block_dim: int = 0,
    interpret: bool | None = None,
) -> None:
    """Copy whole blocks inside each cache (copy-on-write): block dst <- block src for each pair.

    caches: K, V and scale tensors whose dimension block_dim indexes blocks (0 for one layer's
    [num_blocks, page, ...], 1 for a stack [num_layers, num_blocks, ...]); src_dst [P, 2].
    Sources and destinations must be disjoint.
    """
    if not caches:
        return
    src, dst = _pairs(src_dst, caches[0].device)
    _copy_rows([ref.block_rows(c, block_dim) for c in caches], src, dst, interpret)


def move_slots(
    caches: Sequence[torch.Tensor],
    src_slots: torch.Tensor,
    dst_slots: torch.Tensor,
    *,
    block_dim: int = 0,
    interpret: bool | None = None,
) -> None:
    """Move single token slots (compaction after eviction): flat slot dst <- slot src, per pair.

    Slots are block * page + offset, as in slot mappings; caches as for copy_blocks.
    Sources and destinations must be disjoint.
    """
    if not caches:
        return
    device = caches[0].device
    src = torch.as_tensor(src_slots, dtype=torch.int64).to(device)
    dst = torch.as_tensor(dst_slots, dtype=torch.int64).to(device)
    _copy_rows([ref.slot_rows(c, block_dim) for c in caches], src, dst, interpret)


def swap_blocks(
    src_caches: Sequence[torch.Tensor],
    dst_caches: Sequence[torch.Tensor],
    src_dst: torch.Tensor | Sequence[tuple[int, int]],
    *,
    block_dim: int = 0,
) -> None:
    """Copy blocks between two pools, e.g. GPU cache <-> host swap space: dst[d] <- src[s] per pair.

    A gather, one transfer and a scatter in torch (the copy engine does the transfer).
    """
    assert len(src_caches) == len(dst_caches)
    pairs = torch.as_tensor(src_dst, dtype=torch.int64).reshape(-1, 2)
    for s, d in zip(src_caches, dst_caches):
        ref.copy_rows_ref(ref.block_rows(s, block_dim), pairs[:, 0], pairs[:, 1], ref.block_rows(d, block_dim))
