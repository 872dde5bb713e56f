"""Paged decode attention: the Triton kernel (interpreted) against the float32 torch reference."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

import kernels
from kernels import decode_config as dc
from kernels import reference as ref
from kernels._dispatch import triton_module
from paged_cases import make_cache, query_dtype, rel_err

# Error bound of the issue for fp16 KV, and for INT8 / FP8 against the reference on the same
# (dequantized) cache. bf16 rounds the probabilities to 8 bits before the P.V product, so its
# bound is looser.
TOL = {"fp16": 2e-3, "int8": 2e-3, "fp8": 2e-3, "bf16": 1e-2}

# (page size, Hq, Hkv, head dim, KV dtype): every page size, GQA ratio (MHA, 3:1, 4:1, 8:1,
# MQA) and head dim, for fp16 and INT8 each; bf16 and FP8 once. INT8 also with 16 heads a KV
# head: the int8 dot's query parts then take two MMAs, not one (attention_tile.query_operand).
CASES = [
    (8, 4, 4, 64, "fp16"), (16, 6, 2, 128, "fp16"), (32, 8, 2, 64, "fp16"), (64, 16, 2, 128, "fp16"),
    (16, 5, 1, 64, "fp16"),
    (8, 6, 2, 64, "int8"), (16, 8, 2, 128, "int8"), (32, 16, 2, 64, "int8"), (64, 4, 4, 128, "int8"),
    (16, 8, 1, 128, "int8"), (32, 16, 1, 64, "int8"),
    (16, 8, 2, 64, "bf16"), (32, 6, 2, 128, "fp8"),
]
# The INT8 conversions the interpreter runs (it runs "prmt" and "prmt_kv" as "bits", and "i8dot"
# with V by .to(fp16): attention_tile.i8_convert_mode); every INT8 case runs each.
INTERPRETED_I8_MODES = ["bits", "i2f", "i8dot"]
CASE_MODES = [(*case, mode) for case in CASES for mode in (INTERPRETED_I8_MODES if case[-1] == "int8" else [None])]


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


@pytest.mark.parametrize("page,num_heads,num_kv_heads,head_dim,kv_dtype,i8_mode", CASE_MODES)
def test_matches_reference(page, num_heads, num_kv_heads, head_dim, kv_dtype, i8_mode, monkeypatch):
    _poisoned_workspace(monkeypatch)
    if i8_mode:
        monkeypatch.setattr(dc, "INT8_CONVERT", i8_mode)
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


@pytest.mark.parametrize("kv_dtype,i8_mode", [("fp16", None), ("int8", "bits"), ("int8", "i8dot")])
def test_tile_configs_the_bench_tunes(kv_dtype, i8_mode, monkeypatch):
    """Other tiles, the softmax denominator as per-slot partial sums, another split rule."""
    mod = triton_module("decode_attention", "interpret")
    if i8_mode:
        monkeypatch.setattr(dc, "INT8_CONVERT", i8_mode)
    gen = torch.Generator().manual_seed(13)
    cache = make_cache(gen, [1, 150, 77], 16, 2, 64, kv_dtype)
    q = torch.randn(3, 8, 64, generator=gen).half()
    scores = torch.zeros(3, 2, cache.max_slots)
    expected_scores = scores.clone()
    expected = ref.paged_decode_attention_ref(q.float(), cache.k, cache.v, cache.block_tables, cache.seq_lens,
                                              0.125, cache.kv_scales, expected_scores)
    for cfg in (dc.DecodeConfig(32, 4, 2, 16, 2, True), dc.DecodeConfig(128, 4, 2, 4, 1, True)):
        out = torch.full_like(q, float("nan"))
        scores.zero_()
        mod.paged_decode_attention(q, cache.k, cache.v, cache.block_tables, cache.seq_lens, 0.125, cache.kv_scales,
                                   scores, out=out, config=cfg, max_seq_len=150)
        assert rel_err(out, expected) <= TOL[kv_dtype], cfg
        torch.testing.assert_close(scores, expected_scores, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("i8_mode", ["bits", "i8dot"])
def test_int8_extreme_v_scales(i8_mode, monkeypatch):
    """V's scale rides in the exponent (attend_tile): zero, subnormal and huge scales stay exact."""
    monkeypatch.setattr(dc, "INT8_CONVERT", i8_mode)
    gen = torch.Generator().manual_seed(9)
    cache = make_cache(gen, [40, 23], 16, 2, 64, "int8")
    v_scale = cache.kv_scales[1]
    v_scale[0, :4, 0] = torch.tensor([0.0, 2.0 ** -20, 3e4, 1e-3], dtype=torch.float16)
    cache.v[0, 0] = 0  # a zero scale belongs to an all-zero row
    q = torch.randn(2, 4, 64, generator=gen).half()
    expected = ref.paged_decode_attention_ref(q.float(), cache.k, cache.v, cache.block_tables, cache.seq_lens,
                                              0.125, cache.kv_scales)
    for num_splits in (1, 2):
        assert rel_err(_run(cache, q, 0.125, num_splits), expected) <= 2e-3


def test_prmt_selectors_convert_every_byte_in_order():
    """The PTX of the PRMT conversion, emulated by PTX's rules: prmt.b32 d, a, b, sel picks byte
    sel[4i+3:4i] of {b, a} for byte i of d; sub.f16x2 subtracts per half. Every int8 comes back
    exact, in order (output element j from input byte j)."""
    from kernels import attention_tile as tile

    asm = str(tile.PRMT_PACKED_ASM.value if hasattr(tile.PRMT_PACKED_ASM, "value") else tile.PRMT_PACKED_ASM)
    assert "xor.b32 t, $2, 0x80808080" in asm and "mov.b32 c, 0x64806480" in asm
    sel_lo = int(asm.split("prmt.b32 $0, t, 0x64646464, ")[1].split(";")[0], 16)
    sel_hi = int(asm.split("prmt.b32 $1, t, 0x64646464, ")[1].split(";")[0], 16)

    def prmt(a, b, sel):
        pool = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
        return sum(pool[(sel >> (4 * i)) & 0x7] << (8 * i) for i in range(4))

    def halves(word):  # fp16 x2, element 0 in the low half
        return torch.tensor([word & 0xFFFF, word >> 16], dtype=torch.int32).to(torch.int16).view(torch.float16)

    values = torch.arange(-128, 128, dtype=torch.int32)
    for k in range(0, 256, 4):
        x = values[k:k + 4]
        word = sum(((int(v) & 0xFF) << (8 * j)) for j, v in enumerate(x))
        t = word ^ 0x80808080
        out = torch.cat([halves(prmt(t, 0x64646464, sel_lo)), halves(prmt(t, 0x64646464, sel_hi))])
        out = (out.float() - halves(0x64806480).float().repeat(2)).to(torch.float16)  # sub.f16x2 with c
        assert torch.equal(out.float(), x.float()), (x, out)


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


@pytest.mark.parametrize("mode", INTERPRETED_I8_MODES)
@pytest.mark.parametrize("head_dim,num_heads", [(128, 8), (64, 6)])
def test_int8_with_and_without_i2f_matches_reference(head_dim, num_heads, mode, monkeypatch):
    """The I2F-free INT8 -> fp16 conversion (INT8_CONVERT "bits", which the interpreter also runs
    for the PRMT modes), the I2F path and the int8 Q.K^T dot compute the same, every byte value
    of K included."""
    monkeypatch.setattr(dc, "INT8_CONVERT", mode)
    gen = torch.Generator().manual_seed(head_dim)
    cache = make_cache(gen, [1, 45, 130], 16, 2, head_dim, "int8")
    cache.k[0, 0, 0, :8] = torch.tensor([-128, -127, -1, 0, 1, 126, 127, 5], dtype=torch.int8)  # every byte edge
    q = torch.randn(3, num_heads, head_dim, generator=gen).half()
    expected = ref.paged_decode_attention_ref(q.float(), cache.k, cache.v, cache.block_tables, cache.seq_lens,
                                              0.1, cache.kv_scales)
    for num_splits in (1, 3):
        assert rel_err(_run(cache, q, 0.1, num_splits), expected) <= 2e-3


@pytest.mark.parametrize("kv_dtype,num_splits,in_split,i8_mode,score_block", [
    ("fp16", 1, True, None, 256), ("fp16", 1, False, None, 256), ("fp16", 4, True, None, 256),
    ("int8", 2, True, "bits", 256), ("int8", None, True, "bits", 256), ("int8", 1, True, "i8dot", 256),
    ("int8", 2, False, "i8dot", 256), ("fp16", 1, True, None, 512), ("fp16", 2, False, None, 1024)])
def test_scores(kv_dtype, num_splits, in_split, i8_mode, score_block, monkeypatch):
    """score_out gets each slot's probability summed over its group, added in place (with one split
    by stage 1 itself, or by stage 2's chunks; the score pass's step is a bench candidate)."""
    _poisoned_workspace(monkeypatch)
    monkeypatch.setattr(dc, "SCORES_IN_SPLIT", in_split)
    monkeypatch.setattr(dc, "SCORE_BLOCK", score_block)
    if i8_mode:
        monkeypatch.setattr(dc, "INT8_CONVERT", i8_mode)
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


@pytest.mark.parametrize("programs_per_sm,min_tiles", [(16, 4), (4, 2)])
def test_split_count_fills_the_gpu(programs_per_sm, min_tiles):
    """programs_per_sm programs an SM when the context allows (>= min_tiles tiles a split), else
    min_tiles-tile splits; one split once the batch alone fills the GPU or the context is short."""
    target = programs_per_sm * 132
    for batch, length, kv_heads in [(1, 4096, 8), (1, 32768, 8), (16, 4096, 8), (64, 4096, 8), (64, 4096, 3)]:
        splits = dc.choose_num_splits(batch, kv_heads, length, 132, 64, programs_per_sm, min_tiles)
        assert 1 <= splits <= dc.MAX_SPLITS
        if batch * kv_heads >= dc.ONE_SPLIT_WAVES * 132:
            assert splits == 1  # the batch alone fills the GPU
        else:
            assert batch * kv_heads * splits >= target or splits in (-(-length // (64 * min_tiles)), dc.MAX_SPLITS)
    assert dc.choose_num_splits(target, 1, 2048, 132, 64, programs_per_sm, min_tiles) == 1
    assert dc.choose_num_splits(1, 8, 10, 132, 64, programs_per_sm, min_tiles) == 1


def test_public_split_count_is_the_launchers():
    """kernels.decode_num_splits (for callers that capture CUDA graphs and pass num_splits) is the
    count the launcher picks by itself: the same output bit for bit (one split differs)."""
    gen = torch.Generator().manual_seed(6)
    cache = make_cache(gen, [300, 211], 16, 2, 64, "fp16")
    q = torch.randn(2, 4, 64, generator=gen).half()
    splits = kernels.decode_num_splits(2, 2, cache.max_slots, 64, torch.float16, "cpu", interpret=True)
    assert splits > 1
    auto = _run(cache, q, 0.1, None)
    assert torch.equal(auto, _run(cache, q, 0.1, splits)) and not torch.equal(auto, _run(cache, q, 0.1, 1))
    assert kernels.decode_num_splits(1, 8, 32768, 128, torch.float16, "cpu", interpret=False) == 1  # reference


def test_score_chunks_fill_the_gpu_whatever_the_split_count():
    """Stage 2's score pass gets SCORE_PROGRAMS_PER_SM programs an SM (chunks >= 2 score blocks)."""
    for batch, length, kv_heads in [(64, 16384, 8), (64, 4096, 8), (256, 2048, 8), (1, 4096, 8)]:
        chunks = dc.choose_score_chunks(batch, kv_heads, length, 132)
        assert batch * kv_heads * chunks >= dc.SCORE_PROGRAMS_PER_SM * 132 or chunks == -(-length // 512)
    assert dc.choose_score_chunks(64, 8, 16384, 132) > 1  # one split no longer means one chunk
