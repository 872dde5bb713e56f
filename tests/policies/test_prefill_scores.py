"""The prefill score reference against a dense computation, on a shuffled paged cache."""

from __future__ import annotations

import torch

from kernels.scores_ref import paged_prefill_scores_ref


def test_prefill_scores_match_dense_attention():
    g = torch.Generator().manual_seed(0)
    num_blocks, bs, hkv, group, d = 16, 4, 2, 3, 8
    k_cache = torch.randn(num_blocks, bs, hkv, d, generator=g)
    v_cache = torch.randn(num_blocks, bs, hkv, d, generator=g)
    tables = torch.randperm(num_blocks, generator=g)[:12].view(2, 6).int()
    seq_lens = torch.tensor([13, 7])  # new tokens: 5 and 7 (the second has no cached prefix)
    cu = torch.tensor([0, 5, 12])
    q = torch.randn(12, hkv * group, d, generator=g)
    out = torch.zeros(2, hkv, 24)
    paged_prefill_scores_ref(q, k_cache, v_cache, tables, cu, seq_lens, 0.3, out, torch.tensor([0, 2]))
    for b, (n, windows) in enumerate([(5, 5), (7, 2)]):
        L = int(seq_lens[b])
        k = k_cache[tables[b].long()].flatten(0, 1)[:L]  # [L, Hkv, D]
        qb = q[cu[b]:cu[b + 1]][-windows:]  # the counted queries
        pos = torch.arange(L - windows, L)
        logits = torch.einsum("nhd,lhd->nhl", qb, k.repeat_interleave(group, 1)) * 0.3
        logits = logits.masked_fill(torch.arange(L)[None, None, :] > pos[:, None, None], float("-inf"))
        expected = logits.softmax(-1).sum(0).view(hkv, group, L).sum(1)
        torch.testing.assert_close(out[b, :, :L], expected)
        assert torch.allclose(out[b].sum(-1), torch.full((hkv,), float(windows * group)))
        assert (out[b, :, L:] == 0).all()


def test_step_scores_of_a_mixed_step_match_the_reference():
    """Decode rows (one token) scored by the decode kernel's score_out, chunks by the reference:
    the sum is the reference's over the whole step, rows in the batch's order, windows kept."""
    import kernels
    from kernels.scores_ref import paged_step_scores

    g = torch.Generator().manual_seed(1)
    num_blocks, bs, hkv, group, d = 32, 4, 3, 3, 16
    k_cache = torch.randn(num_blocks, bs, hkv, d, generator=g)
    v_cache = torch.randn(num_blocks, bs, hkv, d, generator=g)
    tables = torch.randperm(num_blocks, generator=g)[:30].view(5, 6).int()
    new = [1, 6, 1, 1, 3]  # decode rows between chunks
    seq_lens = torch.tensor([9, 11, 21, 1, 7])  # lengths not multiples of the block size, one of 1
    cu = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()])
    q = torch.randn(int(cu[-1]), hkv * group, d, generator=g)
    windows = torch.tensor([0, 2, 0, 0, 0])
    expected, out = torch.zeros(5, hkv, 24), torch.full((5, hkv, 24), 0.5)
    paged_prefill_scores_ref(q, k_cache, v_cache, tables, cu, seq_lens, 0.3, expected, windows)
    paged_step_scores(q, k_cache, v_cache, tables, cu, seq_lens, 0.3, out, windows)
    torch.testing.assert_close(out - 0.5, expected)  # added in place, to what was there
    ref = torch.zeros(3, hkv, 24)
    kernels.paged_decode_attention(q[cu[[0, 2, 3]]], k_cache, v_cache, tables[[0, 2, 3]], seq_lens[[0, 2, 3]],
                                   0.3, score_out=ref)
    torch.testing.assert_close(expected[[0, 2, 3]], ref)
    assert torch.allclose(expected.sum(-1), torch.tensor([1, 2, 1, 1, 3])[:, None] * float(group))
