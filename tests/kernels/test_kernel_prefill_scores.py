"""The prefill score kernel (kernels/prefill_scores.py, interpreted) against the torch reference
(scores_ref.paged_prefill_scores_ref): shuffled block tables, lengths off the page grid, cached
prefixes, one-token rows, GQA groups that do not fill their padding, INT8 K, SnapKV windows, the
query-tile map of a CUDA graph and a score buffer wider than the sequences."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels.scores_ref import paged_prefill_scores_ref
from kernels.tiles import max_query_tiles, prefill_query_tile, prefill_query_tiles
from paged_cases import make_cache, query_dtype, rel_err

TOL = {"fp16": 2e-3, "int8": 2e-3, "bf16": 1e-2}

# (page, Hq, Hkv, D, KV dtype, [(new tokens, slots incl. them)], windows or None)
CASES = [
    (8, 9, 3, 64, "fp16", [(21, 21), (5, 30), (1, 9)], None),  # SmolLM2's group of 3 (padded to 4)
    (16, 6, 2, 128, "fp16", [(13, 40), (1, 70), (18, 18)], None),
    (32, 8, 2, 64, "int8", [(9, 70), (1, 1), (20, 33)], None),
    (16, 8, 1, 64, "int8", [(40, 40), (6, 50)], [7, 0]),
    (16, 4, 4, 64, "fp16", [(30, 45), (1, 17), (12, 12)], [5, 1, 20]),  # a window past the chunk counts all
    (16, 6, 2, 64, "bf16", [(10, 25)], None),
]


def run_case(page, num_heads, num_kv_heads, head_dim, kv_dtype, chunks, windows, seed, tiles=False, extra_slots=0):
    gen = torch.Generator().manual_seed(seed)
    cache = make_cache(gen, [n for _, n in chunks], page, num_kv_heads, head_dim, kv_dtype)
    new = [c for c, _ in chunks]
    cu = torch.tensor([0] + new, dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu[-1]), num_heads, head_dim, generator=gen).to(query_dtype(kv_dtype))
    w = None if windows is None else torch.tensor(windows, dtype=torch.int32)
    shape = (len(chunks), num_kv_heads, cache.max_slots + extra_slots)
    start = torch.rand(shape, generator=gen)  # scores add to what is there
    expected = start.clone()
    paged_prefill_scores_ref(q.float(), cache.k, cache.v, cache.block_tables, cu, cache.seq_lens, head_dim ** -0.5,
                             expected, w, cache.kv_scales)
    out = start.clone()
    map_ = None
    if tiles:
        tile = prefill_query_tile(num_heads, num_kv_heads)
        map_ = torch.from_numpy(prefill_query_tiles(new, tile, max_query_tiles(sum(new), len(new), tile)))
        map_ = map_[:, torch.randperm(map_.shape[1], generator=gen)].contiguous()  # any order
    kernels.paged_prefill_scores(q, cache.k, cache.v, cache.block_tables, cu, cache.seq_lens, head_dim ** -0.5, out,
                                 w, cache.kv_scales, max_query_len=None if tiles else max(new), query_tiles=map_,
                                 interpret=True)
    return out, expected, start, cache


@pytest.mark.parametrize("page,num_heads,num_kv_heads,head_dim,kv_dtype,chunks,windows", CASES)
def test_matches_reference(page, num_heads, num_kv_heads, head_dim, kv_dtype, chunks, windows):
    out, expected, start, cache = run_case(page, num_heads, num_kv_heads, head_dim, kv_dtype, chunks, windows,
                                           seed=page * 131 + num_heads)
    assert rel_err(out - start, expected - start) <= TOL[kv_dtype]
    # slots past each sequence's length are untouched; each query's probabilities sum to 1 over the
    # slots it sees, so a sequence's scores sum to its counted queries x the group size
    for b, n in enumerate(cache.seq_lens.tolist()):
        assert torch.equal(out[b, :, n:], start[b, :, n:])
    new = [c for c, _ in chunks]
    counted = [min(w, c) if w else c for w, c in zip(windows or [0] * len(new), new)]
    sums = (out - start).sum(dim=(1, 2)).double()
    assert torch.allclose(sums, torch.tensor(counted, dtype=torch.float64) * (num_heads // num_kv_heads) * num_kv_heads,
                          rtol=2e-3)


@pytest.mark.parametrize("case", [CASES[0], CASES[3]])
def test_query_tile_map_and_a_wider_buffer_give_the_same_scores(case):
    """The grid a CUDA graph uses (a shuffled query-tile map padded with -1, score rows wider than
    any sequence) adds bitwise what the per-chunk grid adds."""
    page, hq, hkv, d, kv, chunks, windows = case
    seed = page * 131 + hq
    grid, _, _, _ = run_case(page, hq, hkv, d, kv, chunks, windows, seed, extra_slots=48)
    mapped, _, _, _ = run_case(page, hq, hkv, d, kv, chunks, windows, seed, tiles=True, extra_slots=48)
    assert torch.equal(grid, mapped)


def test_reference_dispatch_is_the_step_scores_path():
    """On CPU tensors without the interpreter, kernels.paged_prefill_scores is the torch path."""
    gen = torch.Generator().manual_seed(4)
    cache = make_cache(gen, [30, 9], 8, 2, 64, "fp16")
    cu = torch.tensor([0, 12, 13], dtype=torch.int32)
    q = torch.randn(13, 6, 64, generator=gen)
    expected = torch.zeros(2, 2, cache.max_slots)
    paged_prefill_scores_ref(q, cache.k, cache.v, cache.block_tables, cu, cache.seq_lens, 0.125, expected)
    out = torch.zeros_like(expected)
    kernels.paged_prefill_scores(q, cache.k, cache.v, cache.block_tables, cu, cache.seq_lens, 0.125, out,
                                 interpret=False)
    assert torch.allclose(out, expected, atol=1e-5)
