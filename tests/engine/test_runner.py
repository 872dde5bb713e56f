"""The runner's step packing: a decode batch padded to a CUDA-graph bucket computes exactly what
the unpadded batch computes, and the padding rows write nothing to the cache.

CUDA graphs themselves need a GPU (bench/engine.py checks graph replays against eager steps
there); what a graph replays is this padded step, which runs here on the CPU reference path."""

from __future__ import annotations

import torch

from engine.config import ModelConfig
from engine.loader import random_model
from engine.model import fused_weight
from engine.runner import BATCH_BUCKETS, ModelRunner, StepInput, _bucket, _width_bucket
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
    rows, width = _bucket(len(batch), BATCH_BUCKETS), _width_bucket(4)
    assert (rows, width) == (4, 16)
    ids, meta, last = runner.prepare(batch, rows=rows, width=width)
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


def test_buckets():
    assert [_bucket(n, BATCH_BUCKETS) for n in (1, 3, 9, 16, 17, 250, 512, 513)] == [1, 4, 16, 16, 32, 256, 512, None]
    assert [_width_bucket(n) for n in (1, 16, 17, 100, 1000)] == [16, 16, 32, 128, 1024]


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
