"""Attention each cached slot receives during a prefill chunk (what H2O and SnapKV need from
the prompt): the torch reference of kernels/prefill_scores.py, and what kernels.paged_prefill_scores
runs on CPU tensors (paged_step_scores)."""

from __future__ import annotations

import torch

import kernels
from kernels.reference import _attend, _paged_prefill


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

    def accumulate(b, q_, k, v, mask):  # q_ [n, Hq, D], k/v [L, Hkv, D], mask [n, L]
        n = int(windows[b]) if windows is not None and int(windows[b]) > 0 else len(q_)
        _, probs = _attend(q_[-n:], k, v, scale, mask[-n:])  # [n, Hq, L]
        group = probs.shape[1] // num_kv_heads
        score_out[b, :, : k.shape[0]] += probs.sum(0).view(num_kv_heads, group, -1).sum(1)
        return torch.zeros_like(q_)  # the scores are the result; the attention output is not needed

    _paged_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, kv_scales, torch.float32, accumulate)


def paged_step_scores(
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
    """`paged_prefill_scores_ref` for a step that mixes prefill chunks and one-token (decode)
    sequences: the one-token sequences get their scores from the decode kernel's score_out (one
    launch for all of them: the same probabilities, summed over the group's heads), the chunks from
    the reference (a loop over sequences). A serving step with H2O has many decode rows and few
    chunks, so this is what keeps its cost near the decode kernel's rather than a launch per row."""
    lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    one = lens == 1
    rows, rest = one.nonzero().squeeze(1), (~one & (lens > 0)).nonzero().squeeze(1)
    if len(rows):
        scores = torch.zeros(len(rows), *score_out.shape[1:], dtype=score_out.dtype, device=score_out.device)
        kernels.paged_decode_attention(q[cu_seqlens_q[rows].long()], k_cache, v_cache, block_tables[rows],
                                       seq_lens[rows], scale, kv_scales=kv_scales, score_out=scores)
        score_out.index_add_(0, rows, scores)
    if len(rest):
        tokens = torch.repeat_interleave(~one, lens)  # the chunks' tokens in the packed step
        cu = torch.cat([lens.new_zeros(1), lens[rest].cumsum(0)])
        scores = torch.zeros(len(rest), *score_out.shape[1:], dtype=score_out.dtype, device=score_out.device)
        paged_prefill_scores_ref(q[tokens], k_cache, v_cache, block_tables[rest], cu, seq_lens[rest], scale, scores,
                                 windows[rest] if windows is not None else None, kv_scales)
        score_out.index_add_(0, rest, scores)
