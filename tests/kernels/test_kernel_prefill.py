"""Paged prefill attention (cached prefix, chunked prefill): Triton (interpreted) and the
gather-then-SDPA torch path against the float32 reference."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import reference as ref
from kernels.tiles import max_query_tiles, prefill_query_tile, prefill_query_tiles
from paged_cases import make_cache, query_dtype, rel_err

TOL = {"fp16": 2e-3, "int8": 2e-3, "bf16": 1e-2}

# (page, Hq, Hkv, D, KV dtype, [(new tokens, slots incl. them)]): full prompts (n == len), prefix
# hits and later chunks (n < len), a single new token, lengths off the page grid.
CASES = [
    (8, 4, 4, 64, "fp16", [(21, 21), (5, 30), (1, 9)]),
    (16, 6, 2, 128, "fp16", [(13, 40), (18, 18)]),
    (32, 8, 2, 64, "int8", [(9, 70), (1, 1), (20, 33)]),
    (64, 16, 2, 64, "fp16", [(7, 100)]),
    (16, 8, 1, 128, "int8", [(12, 12), (6, 50)]),
    (16, 6, 2, 64, "bf16", [(10, 25)]),
]


@pytest.mark.parametrize("page,num_heads,num_kv_heads,head_dim,kv_dtype,chunks", CASES)
def test_matches_reference(page, num_heads, num_kv_heads, head_dim, kv_dtype, chunks):
    gen = torch.Generator().manual_seed(page * 131 + num_heads)
    cache = make_cache(gen, [n for _, n in chunks], page, num_kv_heads, head_dim, kv_dtype)
    new = [c for c, _ in chunks]
    cu = torch.tensor([0] + new, dtype=torch.int32).cumsum(0).to(torch.int32)
    q = torch.randn(int(cu[-1]), num_heads, head_dim, generator=gen).to(query_dtype(kv_dtype))
    args = (cache.k, cache.v, cache.block_tables, cu, cache.seq_lens, head_dim ** -0.5, cache.kv_scales)
    expected = ref.paged_prefill_attention_ref(q.float(), *args)
    out = torch.full_like(q, float("nan"))
    kernels.paged_prefill_attention(q, *args, out=out, max_query_len=max(new), interpret=True)
    assert not out.isnan().any()
    assert rel_err(out, expected) <= TOL[kv_dtype]
    sdpa = ref.paged_prefill_attention_sdpa(q.float(), *args)  # float32: the torch path's arithmetic
    assert rel_err(sdpa, expected) <= 1e-5


def test_prefill_of_one_token_equals_decode():
    """A chunk of one new token is a decode step."""
    gen = torch.Generator().manual_seed(9)
    cache = make_cache(gen, [33, 8], 8, 2, 64, "fp16")
    q = torch.randn(2, 8, 64, generator=gen).half()
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    args = (cache.k, cache.v, cache.block_tables)
    prefill = kernels.paged_prefill_attention(q, *args, cu, cache.seq_lens, 0.125, interpret=True)
    decode = kernels.paged_decode_attention(q, *args, cache.seq_lens, 0.125, interpret=True)
    assert rel_err(prefill, decode) <= 2e-3


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]])
def test_query_tile_map_equals_the_chunk_grid(case):
    """The tile map a CUDA graph uses (tiles in any order, padded with -1 entries) computes
    bitwise what the per-chunk grid computes, and writes no token outside the chunks."""
    page, num_heads, num_kv_heads, head_dim, kv_dtype, chunks = case
    gen = torch.Generator().manual_seed(7 + page)
    cache = make_cache(gen, [n for _, n in chunks], page, num_kv_heads, head_dim, kv_dtype)
    new = [c for c, _ in chunks]
    cu = torch.tensor([0] + new, dtype=torch.int32).cumsum(0).to(torch.int32)
    extra = 5  # tokens past the last chunk (a graph's padding): no tile may write them
    q = torch.randn(int(cu[-1]) + extra, num_heads, head_dim, generator=gen).to(query_dtype(kv_dtype))
    args = (cache.k, cache.v, cache.block_tables, cu, cache.seq_lens, head_dim ** -0.5, cache.kv_scales)
    grid_out = kernels.paged_prefill_attention(q, *args, out=torch.full_like(q, float("nan")), interpret=True)
    tile = prefill_query_tile(num_heads, num_kv_heads)
    tiles = prefill_query_tiles(new, tile, max_query_tiles(sum(new), len(new), tile) + 3)
    tiles = tiles[:, torch.randperm(tiles.shape[1], generator=gen).numpy()]
    map_out = kernels.paged_prefill_attention(q, *args, out=torch.full_like(q, float("nan")),
                                              query_tiles=torch.from_numpy(tiles.copy()), interpret=True)
    real = int(cu[-1])
    assert torch.equal(map_out[:real], grid_out[:real])
    assert map_out[real:].isnan().all(), "a padding tile wrote past the chunks"
    assert rel_err(map_out[:real], ref.paged_prefill_attention_ref(q[:real].float(), *args)) <= TOL[kv_dtype]


def test_query_tiles_cover_every_new_token_once():
    new = [1, 0, 17, 16, 3]
    tiles = prefill_query_tiles(new, 4, max_query_tiles(sum(new), len(new), 4))
    covered = sorted((int(b), int(f) + i) for b, f in tiles.T if b >= 0 for i in range(4) if f + i < new[b])
    assert covered == sorted((b, i) for b, n in enumerate(new) for i in range(n))
    assert (tiles[0] >= 0).sum() == 1 + 5 + 4 + 1 and tiles.shape[1] == 37 // 4 + 5
    assert prefill_query_tile(9, 3) == 16 and prefill_query_tile(32, 4) == 8 and prefill_query_tile(4, 4) == 64
