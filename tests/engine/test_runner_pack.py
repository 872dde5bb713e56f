"""The runner's host-side packing (`_pack`) against the straightforward per-row loop it replaced,
kept here as the reference: same int64 array, byte for byte, on seeded random steps of every
kind the runner packs (decode batches padded to a graph bucket, prefill / mixed steps split with
a query-tile map, exact shapes, attention-score shapes, the empty batch a graph capture packs)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from engine.buckets import BATCH_BUCKETS, SEQ_BUCKETS, TOKEN_BUCKETS, bucket, width_bucket
from engine.config import ModelConfig
from engine.loader import random_model
from engine.runner import ModelRunner, Shape, StepInput, _fields, _pack
from kernels.tiles import prefill_query_tiles
from kvcache.kv_store import PagedKVStore

BLOCK = 16  # block size of the random steps (the packing does not read it)
TINY = ModelConfig(name="tiny", vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=6,
                   num_kv_heads=2, head_dim=16, max_position_embeddings=512)


def reference_pack(batch: list[StepInput], shape: Shape, tile: int = 1) -> np.ndarray:
    """The per-row loop `_pack` replaced (numpy slice assignments, row by row)."""
    lens = np.fromiter((len(s.token_ids) for s in batch), np.int64, len(batch))
    order = np.argsort(lens != 1, kind="stable") if shape.split else np.arange(len(batch))
    batch, lens = [batch[b] for b in order], lens[order]
    pad_tokens = 1 if shape.decode else 0  # per padding row
    used = int(lens.sum()) + pad_tokens * (shape.rows - len(batch))
    assert len(batch) <= shape.rows and used <= shape.tokens, f"{len(batch)} sequences, {used} tokens exceed {shape}"
    out = np.zeros(shape.size(), np.int64)
    ids, pos, slots, seq_lens, cu, last, tables, tiles = _fields(out, shape)
    i = 0
    for b, s in enumerate(batch):
        n = len(s.token_ids)
        assert n > 0, "every sequence in a step feeds at least one token"
        assert len(s.slots) == n, "one slot per new token"
        ids[i:i + n] = s.token_ids
        pos[i:i + n] = np.arange(s.start_position, s.start_position + n)
        slots[i:i + n] = s.slots
        seq_lens[b] = s.seq_len
        tables[b, :len(s.block_table)] = s.block_table
        i += n
    slots[i:] = -1
    cu[1:len(batch) + 1] = np.cumsum(lens)
    cu[len(batch) + 1:] = cu[len(batch)] + pad_tokens * np.arange(1, shape.rows - len(batch) + 1)
    last[:] = np.maximum(cu[1:] - 1, 0)
    last[order] = last[:len(batch)].copy()
    if shape.tiles:
        tiles[:] = prefill_query_tiles(np.where(shape.split & (lens == 1), 0, lens), tile, shape.tiles)
    return out


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    store = PagedKVStore(TINY.num_layers, 64, 8, TINY.num_kv_heads, TINY.head_dim, dtype="fp32")
    return ModelRunner(random_model(TINY, seed=0), store)


def _sequence(rng: random.Random, blocks: list[int], new: int, start: int, spare: int = 0) -> StepInput:
    """A sequence feeding `new` tokens from `start` on, its table taken from the front of `blocks`
    (shuffled ids), `spare` blocks longer than it reads; some slots write nowhere (-1)."""
    count = -(-(start + new) // BLOCK) + spare
    table = [blocks.pop() for _ in range(count)]
    slots = [table[p // BLOCK] * BLOCK + p % BLOCK if rng.random() > 0.05 else -1 for p in range(start, start + new)]
    ids = [rng.randrange(1 << 17) for _ in range(new)]
    return StepInput(ids, start, slots, table, start + new)


def _blocks(rng: random.Random, count: int = 100_000) -> list[int]:
    blocks = list(range(count)) + [(1 << 40) + 7]  # one id past int32 (never a real store's)
    rng.shuffle(blocks)
    return blocks


def _decode_batch(rng: random.Random, rows: int, max_blocks: int) -> list[StepInput]:
    blocks = _blocks(rng)
    lengths = [rng.randint(1, max_blocks * BLOCK) for _ in range(rows)]  # mostly not multiples of 16
    return [_sequence(rng, blocks, 1, n - 1) for n in lengths]


def _mixed_batch(rng: random.Random, decodes: int, chunks: int, max_chunk: int) -> list[StepInput]:
    """Decode rows and prefill chunks (some a whole prompt, some a later chunk), shuffled."""
    blocks = _blocks(rng)
    batch = [_sequence(rng, blocks, 1, rng.randint(0, 700)) for _ in range(decodes)]
    batch += [_sequence(rng, blocks, rng.randint(2, max_chunk), rng.choice([0, rng.randint(1, 900)]),
                        spare=rng.randint(0, 2)) for _ in range(chunks)]
    rng.shuffle(batch)
    return batch


def _check(batch: list[StepInput], shape: Shape, tile: int = 1):
    got, want = _pack(batch, shape, tile), reference_pack(batch, shape, tile)
    assert got.dtype == want.dtype == np.int64 and got.shape == want.shape == (shape.size(),)
    assert np.array_equal(got, want), f"{shape}: differs at {np.flatnonzero(got != want)[:10]}"


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 16, 64, 130, 256])
def test_decode_batches_padded_to_graph_buckets(rows):
    rng = random.Random(rows)
    for max_blocks in (1, 17, 64, 128):
        batch = _decode_batch(rng, rows, max_blocks)
        width = width_bucket(max(len(s.block_table) for s in batch))
        padded = bucket(rows, BATCH_BUCKETS)
        _check(batch, Shape(True, padded, padded, width))  # a graph's shape: padding rows
        _check(batch, Shape(True, padded, padded, width, scores=True))
        _check(batch, Shape(True, rows, rows, max(len(s.block_table) for s in batch)))  # exact, eager
        _check(batch, Shape(True, padded + 3, padded + 3, width * 2))  # rows and columns to spare


@pytest.mark.parametrize("seed", range(8))
def test_prefill_and_mixed_steps(runner, seed):
    rng = random.Random(100 + seed)
    for decodes, chunks, max_chunk in [(0, 1, 600), (0, 4, 512), (3, 2, 40), (60, 1, 300), (1, 3, 17), (9, 0, 1)]:
        batch = _mixed_batch(rng, decodes, chunks, max_chunk)
        tokens, width = sum(len(s.token_ids) for s in batch), max(len(s.block_table) for s in batch)
        tile = runner.query_tile
        # the graph shape of such a step (split, tile map), its exact shape and the score shape
        padded = runner._prefill_shape(bucket(tokens, TOKEN_BUCKETS), bucket(len(batch), SEQ_BUCKETS),
                                       width_bucket(width))
        assert padded.split and padded.tiles
        _check(batch, padded, tile)
        _check(batch, runner._prefill_shape(tokens, len(batch), width), tile)
        _check(batch, runner._exact_shape(batch, scores=False), tile)
        _check(batch, runner._exact_shape(batch, scores=True), tile)
        _check(batch, Shape(False, tokens + 5, len(batch) + 2, width), tile)  # not split: rows keep their order
        _check(batch, Shape(False, tokens, len(batch), width, tiles=tokens + len(batch)), 1)  # tiles, not split


def test_graph_shapes_the_runner_picks(runner):
    rng = random.Random(7)
    runner.use_cuda_graphs = True  # the shapes a GPU would capture (nothing is captured here)
    try:
        for batch in (_decode_batch(rng, 5, 30), _mixed_batch(rng, 6, 2, 100), _mixed_batch(rng, 0, 3, 64)):
            shape = runner.graph_shape(batch)
            assert shape is not None
            _check(batch, shape, runner.query_tile)
    finally:
        runner.use_cuda_graphs = False


def test_empty_batch_packs_padding_only(runner):
    """What a graph capture packs: every row padding (no writes, no reads)."""
    for shape in (Shape(True, 1, 1, 16), Shape(True, 144, 144, 128), Shape(True, 8, 8, 16, scores=True),
                  runner._prefill_shape(2048, 512, 64), runner._prefill_shape(16, 1, 16), Shape(False, 32, 4, 16)):
        _check([], shape, runner.query_tile)
        ids, pos, slots, seq_lens, cu, last, tables, tiles = _fields(_pack([], shape, runner.query_tile), shape)
        assert (slots == -1).all() and not seq_lens.any() and not tables.any() and (tiles[0] == -1).all()


def test_block_tables_are_not_aliased():
    """Each row's table lands in its own row, the rest of the row zero, whatever the lengths."""
    batch = [StepInput([1], 0, [5], list(range(10 * b, 10 * b + b)), 1) for b in range(6)]
    out = _pack(batch, Shape(True, 8, 8, 16))
    tables = _fields(out, Shape(True, 8, 8, 16))[6]
    for b in range(6):
        assert tables[b].tolist() == list(range(10 * b, 10 * b + b)) + [0] * (16 - b)
    assert not tables[6:].any()


def _bad(batch, shape, message):
    """Both raise AssertionError with the same message, which says `message`."""
    with pytest.raises(AssertionError) as got:
        _pack(batch, shape)
    with pytest.raises(AssertionError) as want:
        reference_pack(batch, shape)
    got, want = str(got.value), str(want.value).splitlines()[0]  # pytest appends its own lines to the test file's
    assert got == want and message in got


def test_bad_steps_raise_as_before():
    ok = StepInput([1], 4, [4], [0], 5)
    _bad([ok, StepInput([], 0, [], [1], 0)], Shape(False, 4, 2, 16),
         "every sequence in a step feeds at least one token")
    _bad([ok, StepInput([1, 2], 0, [3], [1], 2)], Shape(False, 4, 2, 16), "one slot per new token")
    _bad([ok, StepInput([1, 2], 0, [3, 4, 5], [1], 2)], Shape(False, 4, 2, 16), "one slot per new token")
    _bad([ok, ok, ok], Shape(True, 2, 2, 16), "3 sequences, 2 tokens exceed")
    _bad([ok, StepInput([1, 2, 3], 0, [1, 2, 3], [1], 3)], Shape(False, 3, 2, 16), "2 sequences, 4 tokens exceed")
    _bad([ok], Shape(False, 0, 1, 16), "1 sequences, 1 tokens exceed")
    _bad([ok], Shape(True, 1, 2, 16), "1 sequences, 2 tokens exceed")  # a decode graph's padding rows feed one each
    # a table wider than the step's: an error (was numpy's broadcast ValueError), never another row's columns
    with pytest.raises(AssertionError, match="a block table of 17 blocks exceeds"):
        _pack([StepInput([1], 0, [1], list(range(17)), 1), ok], Shape(True, 2, 2, 16))
