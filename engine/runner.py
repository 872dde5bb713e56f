"""ModelRunner: turns one step's sequences into packed tensors and runs the model on them.

The caller (an engine loop or the simulator's compute backend) decides which sequences run,
which tokens they feed and where in the paged cache those tokens go; the runner only builds
the step metadata once (one host-to-device copy) and executes.

On CUDA, decode steps (one new token per sequence) replay CUDA graphs: one graph per
(batch bucket, block-table width bucket, with or without attention scores), captured on first
use into one shared memory pool, reading persistent input buffers that each step overwrites in
place. A batch is padded up to its bucket with rows that write nothing (slot -1) and read
nothing (length 0). Prefill and mixed steps run eagerly (their shapes vary every step).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from engine.model import AttentionMetadata, LlamaModel

# Batch buckets as vLLM's: small powers of two, then steps of 16 (padding costs at most 15 rows)
BATCH_BUCKETS = [1, 2, 4, 8] + list(range(16, 513, 16))
MIN_WIDTH_BLOCKS = 16  # block-table width buckets: powers of two from this many blocks


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


def _bucket(n: int, buckets: list[int]) -> int | None:
    return next((b for b in buckets if b >= n), None)


def _width_bucket(blocks: int) -> int:
    return max(MIN_WIDTH_BLOCKS, 1 << (max(blocks, 1) - 1).bit_length())


def _fields(packed, rows: int, width: int):
    """The views of a packed step (numpy or torch, 1-D int64), in `_pack`'s layout:
    (input_ids T, positions T, slot_mapping T, seq_lens rows, cu_seqlens rows+1, logits rows,
    block_tables [rows, width])."""
    t = (len(packed) - 3 * rows - 1 - rows * width) // 3
    return (packed[:t], packed[t:2 * t], packed[2 * t:3 * t], packed[3 * t:3 * t + rows],
            packed[3 * t + rows:3 * t + 2 * rows + 1], packed[3 * t + 2 * rows + 1:3 * t + 3 * rows + 1],
            packed[3 * t + 3 * rows + 1:].reshape(rows, width))


def _pack(batch: list[StepInput], rows: int, width: int) -> np.ndarray:
    """Every integer a step needs in one int64 array (one host-to-device copy):
    [input_ids T | positions T | slot_mapping T | seq_lens rows | cu_seqlens rows+1 | logits rows |
     block_tables rows*width]. Rows past len(batch) are padding: length 0, no tokens, table 0."""
    lens = np.fromiter((len(s.token_ids) for s in batch), np.int64, len(batch))
    t = int(lens.sum()) + (rows - len(batch))  # a padding row feeds one token that writes nowhere
    out = np.zeros(3 * t + 3 * rows + 1 + rows * width, np.int64)
    ids, pos, slots, seq_lens, cu, last, tables = _fields(out, rows, width)
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
    cu[len(batch) + 1:] = cu[len(batch)] + np.arange(1, rows - len(batch) + 1)
    last[:] = cu[1:] - 1
    return out


class ModelRunner:
    def __init__(self, model: LlamaModel, kv_store, device: torch.device | str | None = None,
                 use_cuda_graphs: bool | None = None, max_graph_batch: int = BATCH_BUCKETS[-1]):
        self.model, self.kv_store = model, kv_store
        self.device = torch.device(device) if device is not None else model.embed_tokens.weight.device
        if use_cuda_graphs is None:  # KVSIM_CUDA_GRAPHS=0 runs every step eagerly (vLLM's enforce_eager)
            use_cuda_graphs = self.device.type == "cuda" and os.environ.get("KVSIM_CUDA_GRAPHS", "1") != "0"
        self.use_cuda_graphs = use_cuda_graphs
        self.graph_buckets = [b for b in BATCH_BUCKETS if b <= max_graph_batch]
        self._graphs: dict[tuple[int, int, bool], _DecodeGraph] = {}
        self._pool = None
        self._inputs: torch.Tensor | None = None  # the packed inputs every graph reads, sized once
        # the widest table a graph takes: the store's blocks, or as many as the model has positions
        self.max_graph_width = _width_bucket(min(kv_store.num_blocks, -(-model.max_positions // kv_store.block_size)))

    # ---- eager ---------------------------------------------------------------------------------------
    def prepare(self, batch: list[StepInput], score_out: list[torch.Tensor] | None = None,
                score_windows: list[int] | None = None, rows: int | None = None, width: int | None = None):
        """-> (input_ids [T], AttentionMetadata, logits_indices [B]) on the runner's device."""
        assert batch, "a step runs at least one sequence"
        rows = rows or len(batch)
        width = width or max(len(s.block_table) for s in batch)
        packed = torch.from_numpy(_pack(batch, rows, width)).to(self.device, non_blocking=True)
        ids, pos, slots, seq_lens, cu, last, tables = _fields(packed, rows, width)
        meta = AttentionMetadata(
            positions=pos, slot_mapping=slots, block_tables=tables.to(torch.int32), seq_lens=seq_lens.to(torch.int32),
            cu_seqlens_q=cu.to(torch.int32), is_decode=len(ids) == rows, score_out=score_out,
            max_query_len=max(len(s.token_ids) for s in batch),
            score_windows=torch.tensor(score_windows, device=self.device) if score_windows is not None else None,
        )
        return ids, meta, last

    def run(self, batch: list[StepInput], score_out: list[torch.Tensor] | None = None,
            score_windows: list[int] | None = None) -> torch.Tensor:
        """Logits [B, vocab] (float32) of each sequence's last new token. With score_out, the
        attention each slot receives is added to it (see AttentionMetadata)."""
        if self._graphable(batch, score_windows):
            return self._run_graph(batch, score_out)
        input_ids, meta, last = self.prepare(batch, score_out, score_windows)
        return self.model(input_ids, meta, self.kv_store, logits_indices=last)

    # ---- CUDA graphs ---------------------------------------------------------------------------------
    def _graphable(self, batch, score_windows) -> bool:
        return (self.use_cuda_graphs and len(batch) <= self.graph_buckets[-1]
                and all(len(s.token_ids) == 1 for s in batch) and not any(score_windows or ())
                and max(len(s.block_table) for s in batch) <= self.max_graph_width)

    def _run_graph(self, batch: list[StepInput], score_out) -> torch.Tensor:
        rows = _bucket(len(batch), self.graph_buckets)
        width = _width_bucket(max(len(s.block_table) for s in batch))
        key = (rows, width, score_out is not None)
        graph = self._graphs.get(key) or self._capture(*key)
        packed = torch.from_numpy(_pack(batch, rows, width))
        graph.inputs.copy_(packed, non_blocking=True)
        graph.graph.replay()
        if score_out is not None:
            for dst, src in zip(score_out, graph.scores):
                n = dst.shape[2]
                dst.add_(src[:len(batch), :, :n])
        return graph.logits[:len(batch)].clone()  # the next replay overwrites graph.logits

    def _capture(self, rows: int, width: int, scores: bool) -> "_DecodeGraph":
        if self._inputs is None:  # sized for the largest graph, once: captured graphs keep reading it
            most = self.graph_buckets[-1]
            self._inputs = torch.zeros(6 * most + 1 + most * self.max_graph_width, dtype=torch.int64,
                                       device=self.device)
        inputs = self._inputs[:6 * rows + 1 + rows * width]
        inputs.copy_(torch.from_numpy(_pack([], rows, width)))  # padding only: writes nowhere
        ids, pos, slots, seq_lens, cu, _, tables = _fields(inputs, rows, width)
        cfg = self.model.config
        score_bufs = ([torch.zeros(rows, cfg.num_kv_heads, width * self.kv_store.block_size, device=self.device)
                       for _ in range(cfg.num_layers)] if scores else None)
        # int32 copies of the table and lengths are made inside the graph, from the int64 inputs
        def step():
            meta = AttentionMetadata(
                positions=pos, slot_mapping=slots, block_tables=tables.to(torch.int32),
                seq_lens=seq_lens.to(torch.int32), cu_seqlens_q=cu.to(torch.int32), is_decode=True,
                score_out=score_bufs)
            if score_bufs is not None:
                for s in score_bufs:
                    s.zero_()
            return self.model(ids, meta, self.kv_store)

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
        captured = _DecodeGraph(graph, inputs, logits, score_bufs)
        self._graphs[(rows, width, scores)] = captured
        return captured


@dataclass
class _DecodeGraph:
    graph: "torch.cuda.CUDAGraph"
    inputs: torch.Tensor  # the packed int64 inputs the graph reads (a view of the shared buffer)
    logits: torch.Tensor  # [rows, vocab] float32, rewritten by every replay
    scores: list[torch.Tensor] | None  # per layer [rows, Hkv, width * block_size], zeroed by every replay
