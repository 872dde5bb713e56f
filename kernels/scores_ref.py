"""Attention each cached slot receives during a prefill chunk (what H2O and SnapKV need from
the prompt). Torch reference only: it runs in quality experiments, not on the serving path."""

from __future__ import annotations

import torch

from kernels.reference import _attend, gather_kv


def paged_prefill_scores_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    score_out: torch.Tensor,
    windows: torch.Tensor | None = None,
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Add to score_out [B, Hkv, max_slots] the causal attention probability each slot gets from
    the chunk's queries, summed over those queries and over the query heads of each group.
    windows [B]: count only the last windows[b] queries of sequence b (0 = all of them).
    Arguments otherwise as `paged_prefill_attention_ref`."""
    num_kv_heads = k_cache.shape[2]
    for b in range(len(seq_lens)):
        start, end = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        if windows is not None and int(windows[b]) > 0:
            start = max(start, end - int(windows[b]))
        num_new, seq_len = end - start, int(seq_lens[b])
        if num_new == 0:
            continue
        k, v = gather_kv(k_cache, v_cache, block_tables[b], seq_len, kv_scales)
        query_slot = torch.arange(seq_len - num_new, seq_len, device=q.device)
        mask = torch.arange(seq_len, device=q.device)[None, :] <= query_slot[:, None]
        _, probs = _attend(q[start:end], k, v, scale, mask)  # [n, Hq, L]
        group = probs.shape[1] // num_kv_heads
        score_out[b, :, :seq_len] += probs.sum(0).view(num_kv_heads, group, seq_len).sum(1)
