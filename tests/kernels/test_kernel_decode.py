"""Paged decode attention: the Triton kernel (interpreted) against the float32 torch reference."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import kernels
from kernels import reference as ref
from kernels._dispatch import triton_module
from paged_cases import make_cache, query_dtype, rel_err

# Error bound of the issue for fp16 KV, and for INT8 / FP8 against the reference on the same
# (dequantized) cache. bf16 rounds the probabilities to 8 bits before the P.V product, so its
# bound is looser.
TOL = {"fp16": 2e-3, "int8": 2e-3, "fp8": 2e-3, "bf16": 1e-2}

# (page size, Hq, Hkv, head dim, KV dtype): every page size, GQA ratio (MHA, 3:1, 4:1, 8:1,
# MQA) and head dim, for fp16 and INT8 each; bf16 and FP8 once.
CASES = [
    (8, 4, 4, 64, "fp16"), (16, 6, 2, 128, "fp16"), (32, 8, 2, 64, "fp16"), (64, 16, 2, 128, "fp16"),
    (16, 5, 1, 64, "fp16"),
    (8, 6, 2, 64, "int8"), (16, 8, 2, 128, "int8"), (32, 16, 2, 64, "int8"), (64, 4, 4, 128, "int8"),
    (16, 8, 1, 128, "int8"),
    (16, 8, 2, 64, "bf16"), (32, 6, 2, 128, "fp8"),
]


def _lens(page: int) -> list[int]:
    """Length 1, lengths off the page grid, and one exactly on it."""
    return [1, 3 * page + 5, 2 * page - 1, 4 * page, 77]


def _poisoned_workspace(monkeypatch):
    mod = triton_module("decode_attention", "interpret")
    monkeypatch.setattr(mod, "_workspace",
                        lambda n, dev, dtype=torch.float32: torch.full((n,), float("nan"), device=dev, dtype=dtype))


def _run(cache, q, scale, num_splits, score_out=None, max_seq_len=None):
    out = torch.full_like(q, float("nan"))  # every element must be written
    kernels.paged_decode_attention(q, cache.k, cache.v, cache.block_tables, cache.seq_lens, scale,
                                   cache.kv_scales, score_out, out=out, num_splits=num_splits,
                                   max_seq_len=max_seq_len, interpret=True)
    return out


@pytest.mark.parametrize("page,num_heads,num_kv_heads,head_dim,kv_dtype", CASES)
def test_matches_reference(page, num_heads, num_kv_heads, head_dim, kv_dtype, monkeypatch):
    _poisoned_workspace(monkeypatch)
    gen = torch.Generator().manual_seed(zlib.crc32(repr((page, num_heads, head_dim, kv_dtype)).encode()))
    cache = make_cache(gen, _lens(page), page, num_kv_heads, head_dim, kv_dtype)
    q = torch.randn(len(cache.seq_lens), num_heads, head_dim, generator=gen).to(query_dtype(kv_dtype))
    scale = 1 / math.sqrt(head_dim)
    expected = ref.paged_decode_attention_ref(q.float(), cache.k, cache.v, cache.block_tables, cache.seq_lens,
                                              scale, cache.kv_scales)
    for num_splits in (1, 3):  # one program per sequence (direct output), and split-K + reduce
        out = _run(cache, q, scale, num_splits)
        assert not out.isnan().any()
        assert rel_err(out, expected) <= TOL[kv_dtype], (num_splits, rel_err(out, expected))


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8"])
def test_quantized_matches_dequantized_cache(kv_dtype):
    """INT8/FP8 in the kernel == the reference run on the cache dequantized to float32."""
    gen = torch.Generator().manual_seed(7)
    cache = make_cache(gen, [1, 40, 93], 16, 2, 64, kv_dtype)
    q = torch.randn(3, 8, 64, generator=gen).half()
    k_deq = ref.dequantize_ref(cache.k, cache.kv_scales[0])
    v_deq = ref.dequantize_ref(cache.v, cache.kv_scales[1])
    expected = ref.paged_decode_attention_ref(q.float(), k_deq, v_deq, cache.block_tables, cache.seq_lens, 0.125)
    out = _run(cache, q, 0.125, None)
    assert rel_err(out, expected) <= TOL[kv_dtype]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("head_dim,num_heads", [(128, 8), (64, 6)])
def test_int8_with_and_without_i2f_matches_reference(head_dim, num_heads, fast, monkeypatch):
    """The I2F-free INT8 -> fp16 conversion (FAST_INT8) and the I2F path compute the same."""
    monkeypatch.setattr(triton_module("decode_attention", "interpret"), "FAST_INT8", fast)
    gen = torch.Generator().manual_seed(head_dim)
    cache = make_cache(gen, [1, 45, 130], 16, 2, head_dim, "int8")
    cache.k[0, 0, 0, :8] = torch.tensor([-128, -127, -1, 0, 1, 126, 127, 5], dtype=torch.int8)  # every byte edge
    q = torch.randn(3, num_heads, head_dim, generator=gen).half()
    expected = ref.paged_decode_attention_ref(q.float(), cache.k, cache.v, cache.block_tables, cache.seq_lens,
                                              0.1, cache.kv_scales)
    for num_splits in (1, 3):
        assert rel_err(_run(cache, q, 0.1, num_splits), expected) <= 2e-3


@pytest.mark.parametrize("kv_dtype,num_splits", [("fp16", 1), ("fp16", 4), ("int8", 2), ("int8", None)])
def test_scores(kv_dtype, num_splits, monkeypatch):
    """score_out gets each slot's probability summed over its group, added in place."""
    _poisoned_workspace(monkeypatch)
    gen = torch.Generator().manual_seed(11)
    page, num_heads, num_kv_heads = 16, 8, 2
    cache = make_cache(gen, [1, 37, 100, 64], page, num_kv_heads, 64, kv_dtype)
    q = torch.randn(4, num_heads, 64, generator=gen).half()
    before = torch.rand(4, num_kv_heads, cache.max_slots + 5, generator=gen)
    scores, expected = before.clone(), before.clone()
    ref.paged_decode_attention_ref(q.float(), cache.k, cache.v, cache.block_tables, cache.seq_lens, 0.125,
                                   cache.kv_scales, expected)
    _run(cache, q, 0.125, num_splits, scores)
    added = scores - before
    group = num_heads // num_kv_heads
    torch.testing.assert_close(added.sum(-1), torch.full((4, num_kv_heads), float(group)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores, expected, rtol=1e-3, atol=2e-5)
    for b, n in enumerate(cache.seq_lens.tolist()):
        assert torch.equal(scores[b, :, n:], before[b, :, n:]), "slots past the length must stay untouched"


@pytest.mark.parametrize("num_splits", [1, 2])
def test_empty_and_single_token_sequences(num_splits):
    """Length 0 gives zeros (not NaN) and no scores; length 1 returns that token's V."""
    gen = torch.Generator().manual_seed(3)
    cache = make_cache(gen, [0, 1, 0, 20], 8, 2, 64, "fp16")
    cache.seq_lens = torch.tensor([0, 1, 0, 20], dtype=torch.int32)
    q = torch.randn(4, 6, 64, generator=gen).half()
    scores = torch.zeros(4, 2, cache.max_slots)
    out = _run(cache, q, 0.125, num_splits, scores)
    assert not out.isnan().any() and not scores.isnan().any()
    assert torch.equal(out[0], torch.zeros_like(out[0])) and torch.equal(out[2], torch.zeros_like(out[2]))
    assert scores[0].sum() == 0 and scores[2].sum() == 0
    v_first = cache.v[cache.block_tables[1, 0], 0]  # [Hkv, D]
    torch.testing.assert_close(out[1], v_first.repeat_interleave(3, dim=0), rtol=0, atol=1e-3)
    torch.testing.assert_close(scores[1, :, 0], torch.full((2,), 3.0))


def test_all_sequences_empty():
    gen = torch.Generator().manual_seed(4)
    cache = make_cache(gen, [0, 0], 16, 1, 64, "int8")
    q = torch.randn(2, 4, 64, generator=gen).half()
    scores = torch.zeros(2, 1, cache.max_slots)
    out = _run(cache, q, 0.125, None, scores)
    assert torch.equal(out, torch.zeros_like(out)) and scores.sum() == 0


def test_short_max_seq_len_hint_still_covers_every_slot():
    """max_seq_len guides the split count; the last split runs to the true end regardless."""
    gen = torch.Generator().manual_seed(5)
    cache = make_cache(gen, [90, 130], 16, 2, 64, "fp16")
    q = torch.randn(2, 4, 64, generator=gen).half()
    expected = ref.paged_decode_attention_ref(q.float(), cache.k, cache.v, cache.block_tables, cache.seq_lens, 0.1)
    assert rel_err(_run(cache, q, 0.1, None, max_seq_len=130), expected) <= 2e-3


def test_split_count_fills_the_gpu():
    """PROGRAMS_PER_SM programs an SM when the context allows (>= 4 tiles a split), else 4-tile splits;
    one split once the batch alone fills the GPU or the context is short."""
    mod = triton_module("decode_attention", "interpret")
    target = mod.PROGRAMS_PER_SM * 132
    for batch, length, kv_heads in [(1, 4096, 8), (1, 32768, 8), (16, 4096, 8), (64, 4096, 8), (64, 4096, 3)]:
        splits = mod.choose_num_splits(batch, kv_heads, length, 132, 64)
        assert 1 <= splits <= mod.MAX_SPLITS
        if batch * kv_heads >= mod.ONE_SPLIT_WAVES * 132:
            assert splits == 1  # the batch alone fills the GPU
        else:
            assert batch * kv_heads * splits >= target or splits in (-(-length // 256), mod.MAX_SPLITS)
    assert mod.choose_num_splits(target, 1, 2048, 132, 64) == 1
    assert mod.choose_num_splits(1, 8, 10, 132, 64) == 1
