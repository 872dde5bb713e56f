"""The runner's step packing: a decode batch padded to a CUDA-graph bucket, and a prefill /
mixed step padded to a token bucket with its query-tile map, compute what the unpadded step
computes, and their padding writes nothing to the cache.

CUDA graphs themselves need a GPU (bench/engine.py and bench/graph_check.py check graph
replays against eager steps there); what a graph replays is this padded step, which runs here
on the CPU reference path and, for the tile map, the prefill kernel under the interpreter."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.config import ModelConfig
from engine.loader import random_model
from engine.model import fused_weight
import kernels
from engine.buckets import BATCH_BUCKETS, TOKEN_BUCKETS
from engine.buckets import bucket as _bucket
from engine.buckets import width_bucket as _width_bucket
from engine.runner import ModelRunner, Shape, StepInput, split_order
from kvcache.kv_store import PagedKVStore

TINY = ModelConfig(name="tiny", vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=6,
                   num_kv_heads=2, head_dim=16, max_position_embeddings=512)


def _setup(kv_dtype="fp32", seed=0):
    model = random_model(TINY, seed=seed)
    store = PagedKVStore(TINY.num_layers, 64, 8, TINY.num_kv_heads, TINY.head_dim, dtype=kv_dtype)
    return model, store, ModelRunner(model, store)


def _prefill_then_decode_batch(runner, gen):
    """Three sequences of ragged lengths on shuffled blocks, prefilled; their next decode step."""
    blocks = torch.randperm(60, generator=gen).tolist()
    batch = []
    for b, n in enumerate([5, 17, 9]):
        table = blocks[b * 4:(b + 1) * 4]
        slots = [table[i // 8] * 8 + i % 8 for i in range(n + 1)]
        ids = torch.randint(0, TINY.vocab_size, (n + 1,), generator=gen).tolist()
        runner.run([StepInput(ids[:n], 0, slots[:n], table, n)])
        batch.append(StepInput(ids[n:], n, slots[n:], table, n + 1))
    return batch


def test_padded_decode_step_equals_unpadded_and_writes_nothing_extra():
    gen = torch.Generator().manual_seed(0)
    model, store, runner = _setup()
    batch = _prefill_then_decode_batch(runner, gen)
    before_k, before_v = store.k.clone(), store.v.clone()
    expected = runner.run(batch)
    after_k = store.k.clone()
    store.k.copy_(before_k)
    store.v.copy_(before_v)
    shape = runner.graph_shape(batch) or Shape(True, 4, 4, 16)  # None: graphs are off on the CPU
    rows, width = _bucket(len(batch), BATCH_BUCKETS), _width_bucket(4)
    assert (shape.rows, shape.width) == (rows, width) == (4, 16)
    ids, meta, last = runner.prepare(batch, shape=shape)
    assert meta.is_decode and meta.block_tables.shape == (rows, width)
    assert meta.slot_mapping[len(batch):].eq(-1).all() and meta.seq_lens[len(batch):].eq(0).all()
    padded = model(ids, meta, store, logits_indices=last)
    torch.testing.assert_close(padded[:len(batch)], expected, rtol=1e-5, atol=1e-5)  # GEMM M differs
    assert torch.isfinite(padded).all()
    # the real rows rewrite their own slots (equal up to GEMM rounding); a padding row writing at
    # slot -1 (the last slot) or anywhere else would show as an O(1) difference
    torch.testing.assert_close(store.k, after_k, rtol=1e-5, atol=1e-5, msg="a padding row wrote to the cache")


def test_mixed_step_packs_prefill_and_decode():
    gen = torch.Generator().manual_seed(1)
    _, _, runner = _setup()
    batch = _prefill_then_decode_batch(runner, gen)
    batch.append(StepInput([3, 4, 5], 0, [500, 501, 502], [62, 63], 3))
    ids, meta, last = runner.prepare(batch)
    assert not meta.is_decode
    assert meta.cu_seqlens_q.tolist() == [0, 1, 2, 3, 6] and last.tolist() == [0, 1, 2, 5]
    assert meta.positions.tolist() == [5, 17, 9, 0, 1, 2] and ids[3:].tolist() == [3, 4, 5]


def _padded_equals_unpadded(runner, store, batch, shape, interpret=False):
    """Run `batch` unpadded, then padded to `shape` from the same cache: equal logits, equal cache."""
    before = store.k.clone(), store.v.clone()
    expected = runner.run(batch)
    after = store.k.clone(), store.v.clone()
    store.k.copy_(before[0])
    store.v.copy_(before[1])
    ids, meta, last = runner.prepare(batch, shape=shape)
    assert len(ids) == shape.tokens and meta.query_tiles.shape == (2, shape.tiles)
    assert meta.slot_mapping[sum(len(s.token_ids) for s in batch):].eq(-1).all()
    if interpret:  # the prefill kernel reading the tile map, interpreted: the chunks' tokens
        layer = runner.model.layers[0].self_attn
        q = torch.randn(shape.tokens, layer.num_heads, layer.head_dim)
        k, v, scales = store.layer(0)
        args = (q, k, v, meta.block_tables, meta.cu_seqlens_q, meta.seq_lens, layer.scale, scales)
        cu = meta.cu_seqlens_q.tolist()
        chunk_tokens = [t for b in range(len(batch)) if cu[b + 1] - cu[b] > 1 for t in range(cu[b], cu[b + 1])]
        assert len(chunk_tokens) == 16 and meta.decode_seq_lens[:3].tolist() == [5 + 1, 17 + 1, 9 + 1]
        torch.testing.assert_close(kernels.paged_prefill_attention(*args, query_tiles=meta.query_tiles,
                                                                   interpret=True)[chunk_tokens],
                                   kernels.paged_prefill_attention(*args)[chunk_tokens], rtol=1e-4, atol=1e-4)
    padded = runner.model(ids, meta, store, logits_indices=last)
    torch.testing.assert_close(padded[:len(batch)], expected, rtol=1e-5, atol=1e-5)
    # decode rows in the decode kernel (split, packed first) = every row in the prefill kernel, in order
    store.k.copy_(before[0])
    store.v.copy_(before[1])
    tokens, width = sum(len(s.token_ids) for s in batch), max(len(s.block_table) for s in batch)
    ids, meta, last = runner.prepare(batch, shape=Shape(False, tokens, len(batch), width))
    assert meta.decode_seq_lens is None
    torch.testing.assert_close(runner.model(ids, meta, store, logits_indices=last), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(store.k, after[0], rtol=1e-5, atol=1e-5, msg="padding wrote to the cache")
    torch.testing.assert_close(store.v, after[1], rtol=1e-5, atol=1e-5, msg="padding wrote to the cache")


def test_padded_mixed_step_equals_unpadded_and_writes_nothing_extra():
    """A step of decode rows and prefill chunks, padded as its CUDA graph pads it: sequences to a
    power of two, tokens to a token bucket (past every sequence's), the tile map for 20 tiles."""
    gen = torch.Generator().manual_seed(2)
    _, store, runner = _setup()
    batch = _prefill_then_decode_batch(runner, gen)
    batch.append(StepInput([3, 4, 5, 6, 7], 4, [500, 501, 502, 503, 504], [61, 62, 63], 9))  # a later chunk
    batch.append(StepInput([9] * 11, 0, list(range(472, 483)), [59, 60], 11))  # a whole prompt
    runner.use_cuda_graphs = True  # what the GPU would pick (nothing is captured here)
    shape = runner.graph_shape(batch)
    runner.use_cuda_graphs = False
    tokens = 3 + 5 + 11
    assert shape == Shape(False, _bucket(tokens, TOKEN_BUCKETS), 8, 16, 32 // runner.query_tile + 8, split=True)
    batch = batch[3:4] + batch[:3] + batch[4:]  # a chunk first: the decode rows are packed first anyway
    _padded_equals_unpadded(runner, store, batch, shape, interpret=True)


def test_graph_shapes(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    _, _, runner = _setup()
    batch = _prefill_then_decode_batch(runner, gen)
    runner.use_cuda_graphs = True  # the shapes a GPU would capture (nothing is captured here)
    assert runner.graph_shape(batch) == Shape(True, 4, 4, 16)
    assert runner.graph_shape(batch, score_out=[]) == Shape(True, 4, 4, 16, scores=True)
    assert runner.graph_shape(batch, score_windows=[0, 2, 0]) is None  # prefill scores: eager
    chunk = StepInput(list(range(300)), 0, list(range(300)), list(range(19)), 300)
    assert runner.graph_shape([chunk]) == Shape(False, 320, 1, 32, 320 // runner.query_tile + 1, split=True)
    assert runner.graph_shape([chunk] * 3 + [StepInput([1] * 1148, 0, [0] * 1148, [0] * 19, 1148)]).tokens == 2048
    tile = runner.query_tile
    # scored: every row in the prefill kernels, unless a one-token row is long (engine/buckets.scored_split)
    assert runner.graph_shape([chunk], score_out=[]) == Shape(False, 320, 1, 32, 320 // tile + 1, scores=True)
    monkeypatch.setattr("engine.buckets.SCORED_SPLIT_MIN_CONTEXT", 64)  # (3,072 tokens: wider than this store)
    long_row = StepInput([1], 63, [63], list(range(4)), 64)
    assert runner.graph_shape([chunk, long_row], score_out=[]).split
    assert not runner.graph_shape([chunk, replace(long_row, seq_len=63)], score_out=[]).split
    assert runner.graph_shape([chunk, long_row]).split and runner.graph_shape([chunk, replace(long_row, seq_len=5)]).split
    big = StepInput([1] * 2100, 0, list(range(2100)), list(range(132)), 2100)
    assert runner.graph_shape([big]) is None  # past max_graph_tokens
    runner.use_cuda_graphs = False
    assert runner.graph_shape(batch) is None


def test_buckets():
    assert [_bucket(n, BATCH_BUCKETS) for n in (1, 3, 9, 16, 17, 250, 512, 513)] == [1, 4, 16, 16, 32, 256, 512, None]
    assert [_width_bucket(n) for n in (1, 16, 17, 100, 1000)] == [16, 16, 32, 128, 1024]
    assert [_bucket(n, TOKEN_BUCKETS) for n in (1, 17, 129, 600, 2047, 2049)] == [16, 32, 144, 640, 2048, 2304]
    steps = [b / a for a, b in zip(TOKEN_BUCKETS[7:], TOKEN_BUCKETS[8:])]
    assert max(steps) <= 1.125 + 1e-9  # padding past 128 tokens costs at most 12.5%


def test_fused_projection_weights_share_storage_and_survive_to():
    model = random_model(TINY, seed=3)
    attn = model.layers[0].self_attn
    w = fused_weight([attn.q_proj, attn.k_proj, attn.v_proj])
    assert w.untyped_storage().data_ptr() == attn.q_proj.weight.untyped_storage().data_ptr()  # a view
    torch.testing.assert_close(w, torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    doubled = model.to(torch.float64)  # separate storages again: the fused weight is then a copy
    w64 = fused_weight([doubled.layers[0].self_attn.q_proj, doubled.layers[0].self_attn.k_proj,
                        doubled.layers[0].self_attn.v_proj])
    torch.testing.assert_close(w64, w.double())


def test_staged_then_launched_step_equals_run_and_a_timed_step_stages_before_its_start():
    """Compute mode stages a step's inputs (host) before its start event and times the launch:
    stage + launch computes what run does, and Timer stages a TimedStep before each timed call."""
    from engine.generate import SamplingParams
    from engine.profile import TimedStep, Timer

    gen = torch.Generator().manual_seed(1)
    model, store, runner = _setup()
    batch = _prefill_then_decode_batch(runner, gen)
    before_k, before_v = store.k.clone(), store.v.clone()
    expected = runner.run(batch)
    store.k.copy_(before_k)
    store.v.copy_(before_v)
    staged = runner.stage(batch)
    assert staged.graph is None and staged.rows == len(batch)  # the CPU runs eagerly
    torch.testing.assert_close(runner.launch(staged), expected)

    events = []
    stage, launch = runner.stage, runner.launch
    runner.stage = lambda *a: events.append("stage") or stage(*a)
    runner.launch = lambda s: events.append("launch") or launch(s)
    step = TimedStep(runner, batch, None, SamplingParams(), torch.Generator().manual_seed(0))
    step()  # a warm-up call stages for itself
    timer = Timer(torch.device("cpu"), warmup=0, reps=2)
    watch_start = timer.watch.start
    timer.watch.start = lambda busy=False: events.append("start") or watch_start(busy)
    assert len(timer.times(step)) == 2
    assert events == ["stage", "launch"] + ["stage", "start", "launch"] * 2


def test_scored_mixed_step_scores_the_same_in_the_kernel_and_the_reference(monkeypatch):
    """A step with a prefill chunk and decode rows that keeps attention scores: the model's layers
    score it with kernels/prefill_scores.py (interpreted here, compiled on a GPU) as the torch
    reference does, per layer."""
    gen = torch.Generator().manual_seed(3)
    model, store, runner = _setup()
    batch = _prefill_then_decode_batch(runner, gen)
    table = torch.randperm(60, generator=gen).tolist()[-4:]  # a new sequence's chunk after 6 cached slots
    runner.run([StepInput([1] * 6, 0, [table[i // 8] * 8 + i % 8 for i in range(6)], table, 6)])
    batch.insert(1, StepInput([3] * 13, 6, [table[i // 8] * 8 + i % 8 for i in range(6, 19)], table, 19))
    scores = {}
    for interpret in ("0", "1"):
        monkeypatch.setenv("KVSIM_TRITON_INTERPRET", interpret)
        state = store.k.clone(), store.v.clone()
        scores[interpret] = runner.score_buffers(batch)
        runner.run(batch, scores[interpret])
        store.k.copy_(state[0])
        store.v.copy_(state[1])
    for reference, kernel in zip(scores["0"], scores["1"]):
        assert reference.sum() > 0 and torch.allclose(kernel, reference, rtol=1e-4, atol=1e-6)


# the padding tokens (of no sequence) carry an unwritten attention output through the interpreted
# RMSNorm, which may overflow; their rows are never read
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("split", [False, True])
def test_padded_scored_mixed_step_scores_each_row_as_unpadded(monkeypatch, split):
    """A step with prefill that keeps scores, padded as its CUDA graph pads it (tokens to a bucket,
    rows to a power of two, the chunks in the prefill kernels via the tile map; the one-token rows
    there too in the batch's order, or split: packed first into the decode kernel, scores by packed
    row): each real row's scores equal the unpadded step's, padding rows score nothing. The score
    kernel reads the tile map interpreted here."""
    monkeypatch.setenv("KVSIM_TRITON_INTERPRET", "1")
    monkeypatch.setattr("engine.buckets.SCORED_SPLIT_MIN_CONTEXT", 1 if split else 10**9)
    gen = torch.Generator().manual_seed(5)
    _, store, runner = _setup()
    batch = _prefill_then_decode_batch(runner, gen)
    batch.insert(1, StepInput([3, 4, 5, 6, 7], 4, [500, 501, 502, 503, 504], [61, 62, 63], 9))
    runner.use_cuda_graphs = True
    shape = runner.graph_shape(batch, score_out=[])
    runner.use_cuda_graphs = False
    assert shape.scores and shape.split == split and shape.rows == 4 and shape.tiles > 0
    state = store.k.clone(), store.v.clone()
    expected = runner.score_buffers(batch)
    logits = runner.run(batch, expected)
    store.k.copy_(state[0])
    store.v.copy_(state[1])
    slots = shape.width * store.block_size
    padded = [torch.zeros(shape.rows, TINY.num_kv_heads, slots) for _ in range(TINY.num_layers)]
    ids, meta, last = runner.prepare(batch, padded, shape=shape)
    assert meta.query_tiles is not None and (meta.decode_seq_lens is not None) == split
    out = runner.model(ids, meta, store, logits_indices=last)
    torch.testing.assert_close(out[:len(batch)], logits, rtol=1e-4, atol=1e-4)
    # packed row p holds batch row order[p]
    order = split_order([len(s.token_ids) for s in batch]) if split else list(range(len(batch)))
    assert order == ([0, 2, 3, 1] if split else [0, 1, 2, 3])
    for want, got in zip(expected, padded):
        assert want.sum() > 0
        torch.testing.assert_close(got[:len(batch), :, :want.shape[2]], want[order], rtol=1e-4, atol=1e-6)
        assert got[len(batch):].eq(0).all() and got[:, :, want.shape[2]:].eq(0).all()


def test_scored_split_step_scores_as_every_row_in_the_prefill_kernels(monkeypatch):
    """A scored step with prefill and a long one-token row (scored_split; the bar lowered here) runs
    its one-token rows in the decode kernel, their scores from its score pass, and its chunks in the
    prefill kernels and the score kernel: through runner.run (scores added out in the batch's order)
    its logits and each row's scores equal the step with every row in the prefill kernels, in the
    batch's order."""
    monkeypatch.setenv("KVSIM_TRITON_INTERPRET", "1")
    monkeypatch.setattr("engine.buckets.SCORED_SPLIT_MIN_CONTEXT", 8)
    gen = torch.Generator().manual_seed(6)
    _, store, runner = _setup()
    batch = _prefill_then_decode_batch(runner, gen)
    batch.insert(1, StepInput([3, 4, 5, 6, 7], 4, [500, 501, 502, 503, 504], [61, 62, 63], 9))
    assert runner._exact_shape(batch, scores=True).split
    state = store.k.clone(), store.v.clone()
    split = runner.score_buffers(batch)
    logits = runner.run(batch, split)
    store.k.copy_(state[0])
    store.v.copy_(state[1])
    tokens, width = sum(len(s.token_ids) for s in batch), max(len(s.block_table) for s in batch)
    whole = runner.score_buffers(batch)
    ids, meta, last = runner.prepare(batch, whole, shape=Shape(False, tokens, len(batch), width, scores=True))
    assert meta.decode_seq_lens is None and meta.chunk_seq_lens is None
    torch.testing.assert_close(runner.model(ids, meta, store, logits_indices=last), logits, rtol=1e-4, atol=1e-4)
    for got, want in zip(split, whole):
        assert want[0].sum() > 0 and want[1].sum() > 0  # a decode row and the chunk
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
