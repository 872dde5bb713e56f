"""ModelRunner: turns one step's sequences into packed tensors and runs the model on them.

The caller (an engine loop or the simulator's compute backend) decides which sequences run,
which tokens they feed and where in the paged cache those tokens go; the runner only builds
the step metadata once (one host-to-device copy) and executes.

On CUDA, steps replay CUDA graphs, captured on first use into one shared memory pool, reading
one persistent input buffer that each step overwrites in place (an eager step on a slow host
launches ~300 kernels at 15-100 us each, for a few ms of GPU work):
  decode steps (one new token per sequence): one graph per (batch bucket, block-table width
    bucket, with or without attention scores); a batch is padded with rows that write nothing
    (slot -1) and read nothing (length 0);
  steps with prefill chunks: one graph per (token bucket, sequence bucket, width bucket); padding
    sequences feed no token, the tokens past the step's own write nothing, and the prefill kernel
    reads a query-tile map (kernels/tiles.py) so its grid does not depend on the chunks.
  steps with prefill that keep attention scores (H2O, TOVA): the same, the chunks keeping their
    scores in the score kernel (kernels/prefill_scores.py), into score buffers shared by the graphs
    of one (rows, width). Where a one-token row reads SCORED_SPLIT_MIN_CONTEXT tokens or more
    (engine/buckets.py), the decode rows run split and keep theirs in the decode kernel's score pass,
    the buffers' rows in the packed order (one-token rows first: launch() adds them out in the
    batch's); otherwise every row runs in the prefill kernels, in the batch's order.
Steps that score only a window of their queries (SnapKV's prompt), more tokens than
max_graph_tokens, or wider tables than the model's positions run eagerly, as does everything
with use_cuda_graphs=False (KVSIM_CUDA_GRAPHS=0; vLLM's enforce_eager).
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from itertools import accumulate, chain

import numpy as np
import torch

from engine.buckets import (BATCH_BUCKETS, MAX_GRAPH_TOKENS, SEQ_BUCKETS, TOKEN_BUCKETS, bucket, scored_split,
                            width_bucket)
from engine.model import AttentionMetadata, LlamaModel
from kernels.tiles import max_query_tiles, prefill_query_tile, prefill_query_tiles


@dataclass
class StepInput:
    """One sequence's part of a step.

    token_ids      new tokens fed this step (a prefill chunk, or one decode token)
    start_position RoPE position of the first of them (tokens are consecutive)
    slots          flat cache slot for each new token (block_id * block_size + offset)
    block_table    the sequence's physical blocks, in logical order
    seq_len        slots the sequence reads after this step's writes (cached + new)
    """

    token_ids: list[int]
    start_position: int
    slots: list[int]
    block_table: list[int]
    seq_len: int


@dataclass(frozen=True)
class Shape:
    """A step's padded shape: what one CUDA graph (or one eager step's packing) holds.

    tokens  packed tokens (>= the batch's new tokens, + one per padding row in a decode step)
    rows    sequences (>= the batch's); width: block-table columns
    tiles   entries of the prefill kernel's query-tile map (0: the kernel sizes its own grid)
    split   a step with prefill chunks whose one-token sequences (decode rows) run in the decode
            kernel (split-K: a long context is not one program's serial walk): they are packed
            first, the tile map leaves them out; with scores, each row's are in the packed order.
            Not split with scores unless a one-token row is long (scored_split), nor where the scores
            count only a window of the queries (SnapKV's prompt): every row in the prefill kernels,
            in the batch's order
    """

    decode: bool
    tokens: int
    rows: int
    width: int
    tiles: int = 0
    scores: bool = False
    split: bool = False

    @property
    def decode_rows(self) -> int:
        """Leading rows the decode kernel takes in a split step (those of one token; the rest read 0)."""
        return min(self.rows, self.tokens) if self.split else 0

    def size(self) -> int:
        return 3 * self.tokens + 3 * self.rows + 1 + self.rows * self.width + 2 * self.tiles


def _fields(packed, shape: Shape):
    """The views of a packed step (numpy or torch, 1-D int64), in `_pack`'s layout:
    (input_ids T, positions T, slot_mapping T, seq_lens rows, cu_seqlens rows+1, logits rows,
    block_tables [rows, width], query tiles [2, tiles])."""
    t, r, w = shape.tokens, shape.rows, shape.width
    cuts = np.cumsum([t, t, t, r, r + 1, r, r * w, 2 * shape.tiles])
    ids, pos, slots, seq_lens, cu, last, tables, tiles = (packed[a:b] for a, b in zip([0, *cuts[:-1]], cuts))
    return ids, pos, slots, seq_lens, cu, last, tables.reshape(r, w), tiles.reshape(2, shape.tiles)


@functools.lru_cache(maxsize=1024)
def _int64s(count: int) -> struct.Struct:
    """Packs `count` Python ints as native int64. struct converts Python ints 2-3x faster than
    numpy does (~10 vs 20-30 ns an int), and a decode step converts every block-table entry."""
    return struct.Struct(f"{count}q")


def split_order(lens: list[int]) -> list[int]:
    """A split step's packed order of its rows (batch indices): one-token sequences first, a stable
    sort (each group keeps the batch's order)."""
    return sorted(range(len(lens)), key=lambda b: lens[b] != 1)


def _pack(batch: list[StepInput], shape: Shape, tile: int = 1) -> np.ndarray:
    """Every integer a step needs in one int64 array (one host-to-device copy), in _fields' layout.
    Rows past len(batch) are padding: length 0, table 0, and in a decode step one token that writes
    nowhere (slot -1; a decode graph has a token per row), else none; tokens past the rows' are
    padding of no sequence (slot -1). The query-tile map covers the batch's own tokens in tiles
    of `tile` (kernels/tiles.py), then -1. A split step packs its one-token sequences first (the
    logits rows stay in the batch's order) and leaves them out of the tile map."""
    # No per-row numpy call (each costs ~1 us, several per row): per-row values are gathered in
    # Python lists and converted once, block tables by struct straight into their rows.
    lens = [len(s.token_ids) for s in batch]
    order = split_order(lens) if shape.split else None
    if order is not None:
        batch, lens = [batch[b] for b in order], [lens[b] for b in order]
    n, total = len(batch), sum(lens)
    pad_tokens = 1 if shape.decode else 0  # per padding row
    used = total + pad_tokens * (shape.rows - n)
    assert n <= shape.rows and used <= shape.tokens, f"{n} sequences, {used} tokens exceed {shape}"
    assert all(lens), "every sequence in a step feeds at least one token"
    assert [len(s.slots) for s in batch] == lens, "one slot per new token"
    widths = [len(s.block_table) for s in batch]
    assert max(widths, default=0) <= shape.width, f"a block table of {max(widths)} blocks exceeds {shape}"
    out = np.zeros(shape.size(), np.int64)
    ids, pos, slots, seq_lens, cu, last, tables, tiles = _fields(out, shape)
    # the rows' tokens and slots, concatenated (struct writes straight into out's memory)
    _int64s(total).pack_into(ids, 0, *chain.from_iterable([s.token_ids for s in batch]))
    _int64s(total).pack_into(slots, 0, *chain.from_iterable([s.slots for s in batch]))
    slots[total:] = -1
    seq_lens[:n] = [s.seq_len for s in batch]
    cu[1:n + 1] = list(accumulate(lens))
    cu[n + 1:] = cu[n] + pad_tokens * np.arange(1, shape.rows - n + 1)
    starts = [s.start_position for s in batch]
    if total == n:  # one token a row (decode): its position is the row's start
        pos[:n] = starts
    else:  # a token's position: its row's start + its index in the row (token index - row's cu)
        pos[:total] = np.repeat(np.array(starts, np.int64) - cu[:n], lens) + np.arange(total)
    row_bytes = 8 * shape.width
    for b, (s, width) in enumerate(zip(batch, widths)):  # row b's first `width` columns; the rest stay 0
        _int64s(width).pack_into(tables, b * row_bytes, *s.block_table)
    last[:] = np.maximum(cu[1:] - 1, 0)  # a padding row without tokens points at a real token
    if order is not None:
        last[order] = last[:n].copy()  # logits in the batch's order
    if shape.tiles:
        new_tokens = [0 if shape.split and k == 1 else k for k in lens]
        tiles[:] = prefill_query_tiles(new_tokens, tile, shape.tiles)
    return out


class ModelRunner:
    def __init__(self, model: LlamaModel, kv_store, device: torch.device | str | None = None,
                 use_cuda_graphs: bool | None = None, max_graph_batch: int = BATCH_BUCKETS[-1],
                 max_graph_tokens: int = MAX_GRAPH_TOKENS):
        self.model, self.kv_store = model, kv_store
        self.device = torch.device(device) if device is not None else model.embed_tokens.weight.device
        self.use_cuda_graphs = self.graphs_by_default(self.device) if use_cuda_graphs is None else use_cuda_graphs
        self.graph_buckets = [b for b in BATCH_BUCKETS if b <= max_graph_batch]
        self.token_buckets = [b for b in TOKEN_BUCKETS if b <= max_graph_tokens]
        self.seq_buckets = [b for b in SEQ_BUCKETS if b <= max_graph_batch]
        self.query_tile = prefill_query_tile(model.config.num_heads, model.config.num_kv_heads)
        self._graphs: dict[Shape, _StepGraph] = {}
        self._score_bufs: dict[tuple[int, int], list[torch.Tensor]] = {}  # _graph_score_buffers
        self._pool = None
        self._inputs: torch.Tensor | None = None  # the packed inputs every graph reads, sized once
        # the widest table a graph takes: the store's blocks, or as many as the model has positions
        self.max_graph_width = width_bucket(min(kv_store.num_blocks, -(-model.max_positions // kv_store.block_size)))
        self.captures = 0  # graphs captured so far (each costs a few eager steps, once)

    @staticmethod
    def graphs_by_default(device: torch.device) -> bool:
        """CUDA graphs on CUDA, unless KVSIM_CUDA_GRAPHS=0 (every step eager: vLLM's enforce_eager)."""
        return torch.device(device).type == "cuda" and os.environ.get("KVSIM_CUDA_GRAPHS", "1") != "0"

    # ---- eager ---------------------------------------------------------------------------------------
    def prepare(self, batch: list[StepInput], score_out: list[torch.Tensor] | None = None,
                score_windows: list[int] | None = None, shape: Shape | None = None):
        """-> (input_ids [T], AttentionMetadata, logits_indices [B]) on the runner's device,
        unpadded, or padded to `shape`. In a split step (prefill chunks and one-token rows) the
        model adds scores to score_out's rows in the packed order (split_order; stage() and
        launch() add them out in the batch's)."""
        assert batch, "a step runs at least one sequence"
        shape = shape or self._exact_shape(batch, score_out is not None, score_windows)
        packed = torch.from_numpy(_pack(batch, shape, self.query_tile)).to(self.device, non_blocking=True)
        meta, ids, last = self._metadata(packed, shape, score_out)
        meta.max_query_len = max(len(s.token_ids) for s in batch)
        if any(score_windows or ()):  # (all 0: every query counts, as without windows)
            meta.score_windows = torch.tensor(score_windows, device=self.device)
        return ids, meta, last

    def score_buffers(self, batch: list[StepInput]) -> list[torch.Tensor]:
        """Zeroed score_out for `run`: per layer [B, Hkv, slots of the widest table] float32."""
        cfg, slots = self.model.config, max(len(s.block_table) for s in batch) * self.kv_store.block_size
        return [torch.zeros(len(batch), cfg.num_kv_heads, slots, device=self.device) for _ in range(cfg.num_layers)]

    def run(self, batch: list[StepInput], score_out: list[torch.Tensor] | None = None,
            score_windows: list[int] | None = None) -> torch.Tensor:
        """Logits [B, vocab] (float32) of each sequence's last new token. With score_out, the
        attention each slot receives is added to it (see AttentionMetadata)."""
        return self.launch(self.stage(batch, score_out, score_windows))

    def stage(self, batch: list[StepInput], score_out: list[torch.Tensor] | None = None,
              score_windows: list[int] | None = None) -> Staged:
        """The host's part of a step: its inputs packed and copied to the device (into the graph's
        input buffer, shared by every graph: launch this step before staging another). Compute
        mode times a step from launch() on: host work is not a step's time (see engine/backends/compute.py)."""
        shape = self.graph_shape(batch, score_out, score_windows)
        if shape is None:
            shape = self._exact_shape(batch, score_out is not None, score_windows)
            rows = self._score_rows(batch, shape, score_out)
            if rows is not None:  # scores into packed-order buffers, added out in the batch's order
                packed_scores = [torch.zeros_like(s) for s in score_out]
                eager = self.prepare(batch, packed_scores, score_windows, shape)
                return Staged(len(batch), score_out, eager=eager, packed_scores=packed_scores, score_rows=rows)
            return Staged(len(batch), score_out, eager=self.prepare(batch, score_out, score_windows, shape))
        graph = self._graphs.get(shape) or self._capture(shape)
        graph.inputs.copy_(torch.from_numpy(_pack(batch, shape, self.query_tile)), non_blocking=True)
        return Staged(len(batch), score_out, graph=graph, score_rows=self._score_rows(batch, shape, score_out))

    def _score_rows(self, batch: list[StepInput], shape: Shape, score_out) -> torch.Tensor | None:
        """For each row of a split step's score buffers (the packed order), the batch's row it
        belongs to (None where the buffers are in the batch's order already)."""
        if score_out is None or not shape.split:
            return None
        order = split_order([len(s.token_ids) for s in batch])
        return torch.tensor(order, dtype=torch.int64).to(self.device, non_blocking=True)

    def launch(self, staged: Staged) -> torch.Tensor:
        """The device's part of a staged step: the model (its graph replayed, or eagerly) -> logits."""
        if staged.graph is None:
            input_ids, meta, last = staged.eager
            logits = self.model(input_ids, meta, self.kv_store, logits_indices=last)
            for dst, src in zip(staged.score_out if staged.packed_scores else (), staged.packed_scores or ()):
                dst.index_add_(0, staged.score_rows, src)
            return logits
        graph = staged.graph
        graph.graph.replay()
        if staged.score_out is not None:
            for dst, src in zip(staged.score_out, graph.scores):
                src = src[:staged.rows, :, :dst.shape[2]]
                if staged.score_rows is None:
                    dst.add_(src)
                else:  # packed row p is the batch's row score_rows[p] (one add each: the same sums every run)
                    dst.index_add_(0, staged.score_rows, src)
        return graph.logits[:staged.rows].clone()  # the next replay overwrites graph.logits

    def prepare_graph(self, batch: list[StepInput], score_out=None, score_windows=None) -> bool:
        """Capture now the graph `run` would replay for this step, if any and not captured yet (a
        caller timing steps does this first, as a server captures its graphs at startup).
        True if it captured one."""
        shape = self.graph_shape(batch, score_out, score_windows)
        if shape is None or shape in self._graphs:
            return False
        self._capture(shape)
        return True

    # ---- shapes --------------------------------------------------------------------------------------
    def _prefill_shape(self, tokens: int, rows: int, width: int, scores: bool = False, split: bool = True) -> Shape:
        """A step with prefill chunks: its tile map holds the most tiles `rows` sequences of `tokens`
        tokens can need, its decode rows run split (unless `split` is False)."""
        return Shape(False, tokens, rows, width, max_query_tiles(tokens, rows, self.query_tile), scores, split)

    @staticmethod
    def _splits(batch: list[StepInput], scores: bool) -> bool:
        """Whether a step with prefill runs its one-token rows in the decode kernel: always without
        scores, with them only if one is long (scored_split)."""
        return not scores or scored_split(max((s.seq_len for s in batch if len(s.token_ids) == 1), default=0))

    def _exact_shape(self, batch: list[StepInput], scores: bool, score_windows=None) -> Shape:
        tokens, rows = sum(len(s.token_ids) for s in batch), len(batch)
        width = max(len(s.block_table) for s in batch)
        if tokens == rows or any(score_windows or ()):
            return Shape(tokens == rows, tokens, rows, width, scores=scores)
        return self._prefill_shape(tokens, rows, width, scores, self._splits(batch, scores))

    def graph_shape(self, batch: list[StepInput], score_out=None, score_windows=None) -> Shape | None:
        """The padded shape of the graph this step replays, or None if it runs eagerly."""
        if not self.use_cuda_graphs or any(score_windows or ()):
            return None
        width = width_bucket(max(len(s.block_table) for s in batch))
        if width > self.max_graph_width:
            return None
        n, tokens = len(batch), sum(len(s.token_ids) for s in batch)
        if tokens == n:
            rows = bucket(n, self.graph_buckets)
            return None if rows is None else Shape(True, rows, rows, width, scores=score_out is not None)
        rows, padded = bucket(n, self.seq_buckets), bucket(tokens, self.token_buckets)
        if rows is None or padded is None:
            return None
        scores = score_out is not None
        return self._prefill_shape(padded, rows, width, scores, self._splits(batch, scores))

    def _metadata(self, packed: torch.Tensor, shape: Shape, score_out) -> tuple[AttentionMetadata, torch.Tensor,
                                                                                torch.Tensor]:
        """(metadata, input_ids, logits rows) over a packed step on the device (int32 copies of
        the table, lengths and tiles are made from the int64 inputs, inside a graph if captured)."""
        ids, pos, slots, seq_lens, cu, last, tables, tiles = _fields(packed, shape)
        meta = AttentionMetadata(
            positions=pos, slot_mapping=slots, block_tables=tables.to(torch.int32), seq_lens=seq_lens.to(torch.int32),
            cu_seqlens_q=cu.to(torch.int32), is_decode=shape.decode, score_out=score_out,
            query_tiles=tiles.to(torch.int32) if shape.tiles else None)
        if shape.split:  # rows of one token read their context in the decode kernel, the others nothing there
            d = shape.decode_rows
            meta.decode_seq_lens = torch.where(cu[1:d + 1] - cu[:d] == 1, seq_lens[:d], 0).to(torch.int32)
            if score_out is not None:  # the score kernel takes the chunks alone (the others: length 0)
                meta.chunk_seq_lens = torch.cat([meta.seq_lens[:d] - meta.decode_seq_lens, meta.seq_lens[d:]])
        return meta, ids, last

    # ---- CUDA graphs ---------------------------------------------------------------------------------
    def _input_buffer(self) -> torch.Tensor:
        """Sized once for the largest shape either kind of graph takes: captured graphs keep reading it."""
        if self._inputs is None:
            most, tokens = self.graph_buckets[-1], self.token_buckets[-1] if self.token_buckets else 0
            seqs = self.seq_buckets[-1]
            largest = max(Shape(True, most, most, self.max_graph_width).size(),
                          self._prefill_shape(tokens, seqs, self.max_graph_width).size())
            self._inputs = torch.zeros(largest, dtype=torch.int64, device=self.device)
        return self._inputs

    def _graph_score_buffers(self, rows: int, width: int) -> list[torch.Tensor]:
        """Per layer [rows, Hkv, width * block_size] float32, shared by every graph of (rows, width):
        a replay zeroes them first and launch() adds them out before anything replays again."""
        key = (rows, width)
        if key not in self._score_bufs:
            cfg = self.model.config
            self._score_bufs[key] = [torch.zeros(rows, cfg.num_kv_heads, width * self.kv_store.block_size,
                                                 device=self.device) for _ in range(cfg.num_layers)]
        return self._score_bufs[key]

    def _capture(self, shape: Shape) -> "_StepGraph":
        inputs = self._input_buffer()[:shape.size()]
        inputs.copy_(torch.from_numpy(_pack([], shape)))  # padding only: writes nowhere
        score_bufs = self._graph_score_buffers(shape.rows, shape.width) if shape.scores else None

        def step():
            meta, ids, last = self._metadata(inputs, shape, score_bufs)
            if score_bufs is not None:
                for s in score_bufs:
                    s.zero_()
            return self.model(ids, meta, self.kv_store, logits_indices=None if shape.decode else last)

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm up (Triton compiles, lazy tables) off the graph
            for _ in range(2):
                step()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = step()
        # The first launch uploads the graph to the device: 0.4-0.6 ms more for a SmolLM2 step on an
        # H100 (fidelity run of 2026-12-06 09:30: the first step of each of 65-130 graphs 9-12% over
        # the model, the others 1-3%). Done here, untimed, as at a server's startup; the inputs are
        # still padding, so it writes nowhere.
        graph.replay()
        captured = _StepGraph(graph, inputs, logits, score_bufs)
        self._graphs[shape] = captured
        self.captures += 1
        return captured


@dataclass
class Staged:
    """A step whose inputs are on the device (ModelRunner.stage), ready to launch."""
    rows: int
    score_out: list[torch.Tensor] | None
    graph: "_StepGraph | None" = None
    eager: tuple | None = None  # (input_ids, metadata, logits rows) of a step without a graph
    packed_scores: list[torch.Tensor] | None = None  # an eager split step's scores, in the packed order
    score_rows: torch.Tensor | None = None  # [B] the batch's row of each packed score row (split steps)


@dataclass
class _StepGraph:
    graph: "torch.cuda.CUDAGraph"
    inputs: torch.Tensor  # the packed int64 inputs the graph reads (a view of the shared buffer)
    logits: torch.Tensor  # [rows, vocab] float32, rewritten by every replay
    scores: list[torch.Tensor] | None  # per layer [rows, Hkv, width * block_size], zeroed by every replay
