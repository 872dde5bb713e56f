"""Measure a model on this device: the tables of the calibrated cost model (`kvsim profile`).

Whole steps run as compute mode runs them (ModelRunner.stage then launch, its CUDA graphs for
decode included, then sampling and the tokens back on the host) and are timed as it times them:
CUDA events from the launch of the staged inputs (TimedStep). Ops are timed per layer inside a
CUDA graph of a few calls, so launch gaps do not count: the GPU is kept busy (a spin kernel) while
the host records the start event and launches the graph, so neither the host's launch latency nor
its speed enters an op's time (a slower host measured small ops 30-130% slower without it). Every
point: `warmup` runs, then the median of `reps`. On the CPU (tests only) everything is timed with
perf_counter. Sections run in order of need (what the cost model
requires first) and stop adding points at the deadline; the caller writes what was measured.
The file format is engine/profile_file.py.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import kernels
from engine.buckets import MIN_WIDTH_BLOCKS, width_bucket
from engine.generate import SamplingParams, sample
from engine.model import LlamaModel
from engine.runner import ModelRunner, StepInput
from kvcache.kv_store import PagedKVStore
from kvcache.sizing import kv_bytes_per_block

GREEDY = SamplingParams()
OP_TARGET_S = 200e-6  # an op graph holds enough calls to run about this long (launch gaps vanish)
BUSY_CYCLES = 1_000_000  # GPU clock cycles of spin (~0.5 ms) queued before an op's start event: the host's
                         # launch is done before the GPU reaches the event (torch.cuda._sleep)
STORE_MEMORY_FRACTION = 0.55  # of free GPU memory for the KV store (graphs, activations, logits need the rest)
CPU_STORE_BYTES = 1 << 30


def coarse_first(values) -> list:
    """Both ends, then midpoints, then their midpoints...: a grid cut short still spans its range."""
    values = sorted(set(values))
    order, spans = [], [(0, len(values) - 1)]
    for i in (0, len(values) - 1):
        if values[i] not in order:
            order.append(values[i])
    while spans:
        lo, hi = spans.pop(0)
        if hi - lo > 1:
            mid = (lo + hi) // 2
            order.append(values[mid])
            spans += [(lo, mid), (mid, hi)]
    return order


def every_other(values) -> tuple:
    values = sorted(values)
    return tuple(sorted(set(values[::2]) | {values[-1]}))


@dataclass(frozen=True)
class ProfileGrid:
    batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    contexts: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192)
    prefill_tokens: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    prefill_cached: tuple[int, ...] = (0, 1024, 4096)
    warmup: int = 2
    reps: int = 5
    random_steps: int = 400  # whole steps of random compositions, of each kind (decode-only, with prefill)
    scored_steps: int = 80  # the same keeping attention scores (H2O's steps), of each kind
    step_tokens: int = 2048  # the most tokens a random step feeds (the scheduler's max_num_batched_tokens)

    def widths(self, block_size: int) -> list[tuple[int, int, int]]:
        """(chunk tokens, batch, table width in blocks) of the table_width steps: decode steps and
        steps of one mid-grid chunk, with the shortest context and tables from the narrowest the
        graphs take to the longest context's."""
        top = width_bucket(-(-max(self.contexts) // block_size))
        widths = sorted({top, *(MIN_WIDTH_BLOCKS << i for i in range(0, 16, 2) if MIN_WIDTH_BLOCKS << i < top)})
        chunk = self.prefill_tokens[len(self.prefill_tokens) // 2]
        return [(n, b, w) for n in (0, chunk) for b in every_other(self.batches) for w in widths]

    def mixed(self) -> list[tuple[int, int, int, int]]:
        """(tokens, cached, batch, context) of the mixed steps: mid-grid, not grid corners."""
        n, b, c, s = self.prefill_tokens, self.batches, self.contexts, self.prefill_cached
        mid = lambda v, f: v[min(len(v) - 1, int(len(v) * f))]
        at = [(0.5, 0, 0.4, 0.5), (0.8, 0, 0.75, 0.3), (0.6, 0.5, 0.6, 0.6), (0.3, 0.9, 0.9, 0.2),
              (0.7, 0.5, 0.7, 0.45)]  # fractions along (tokens, cached, batch, context)
        return sorted({(mid(n, fn), mid(s, fs) if fs else 0, mid(b, fb), mid(c, fc)) for fn, fs, fb, fc in at})


QUICK = ProfileGrid(batches=(1, 4, 16, 64, 256), contexts=(128, 512, 2048, 8192),
                    prefill_tokens=(16, 64, 256, 1024, 4096), prefill_cached=(0, 4096), reps=3, random_steps=60,
                    scored_steps=30)
RANDOM_STEP_REPS = 3  # a random step is one fitting row among hundreds: fewer reps than a grid point


def random_compositions(grid: ProfileGrid, rng: np.random.Generator, count: int, min_context: int = 16):
    """count decode-only and count prefill compositions, alternating (a budget cut keeps both kinds):
    [(decode contexts [B], chunks ((cached, new), ...))]. Two families, two of each in turn (so the
    fit's even rows and its held-out odd rows hold both):
    - broad: the batch log-uniform in [1, max batch]; each sequence's context drawn on its own,
      lognormal about a median that is itself log-uniform (heterogeneous, heavy-tailed), up to the
      longest grid context; with prefill, 1-6 chunks of log-uniform new tokens (half after a
      log-uniform cached prefix), a quarter without decode rows, all within grid.step_tokens;
    - serving: what a loaded chunked-prefill scheduler runs (serving_composition)."""
    broad = lambda with_prefill: broad_composition(grid, rng, with_prefill, min_context)
    serving = lambda with_prefill: serving_composition(grid, rng, with_prefill, min_context)
    out = []
    for i in range(count):
        draw = serving if (i // 2) % 2 else broad
        out += [draw(False), draw(True)]
    return out


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> int:
    return round(math.exp(rng.uniform(math.log(lo), math.log(max(lo, hi)))))


def _contexts(grid: ProfileGrid, rng: np.random.Generator, b: int, median_range: tuple, sigma: float,
              min_context: int) -> list[int]:
    """b contexts, lognormal(sigma) about a median log-uniform in median_range, within the grid."""
    top = max(grid.contexts)
    low = min(min_context, top)
    median = _log_uniform(rng, min(median_range[0], top), max(low, min(median_range[1], top)))
    return np.clip(np.round(median * rng.lognormal(0.0, sigma, b)), low, top).astype(int).tolist()


def broad_composition(grid: ProfileGrid, rng: np.random.Generator, with_prefill: bool, min_context: int = 16):
    """One composition of random_compositions' broad family."""
    top_context, top_batch = max(grid.contexts), max(grid.batches)
    contexts = lambda b: _contexts(grid, rng, b, (64, top_context // 4), 0.8, min_context)
    if not with_prefill:
        return contexts(_log_uniform(rng, 1, top_batch)), ()
    b = 0 if rng.random() < 0.25 else _log_uniform(rng, 1, min(top_batch, grid.step_tokens // 2))
    chunks = _chunks(grid, rng, grid.step_tokens - b, int(rng.integers(1, 7)))
    return (contexts(b) if b else []), chunks


def _chunks(grid: ProfileGrid, rng: np.random.Generator, room: int, count: int, fill: bool = False,
            first_cached_only: bool = False) -> tuple:
    """Up to `count` prefill chunks ((cached, new), ...) within `room` tokens: new tokens
    log-uniform up to the grid's largest chunk (fill: the last takes the room left), half of them
    (first_cached_only: only the first may) after a log-uniform cached prefix."""
    top_tokens, top_cached, chunks = max(grid.prefill_tokens), max(grid.prefill_cached), []
    for i in range(count):
        if room < 1:
            break
        n = min(room, _log_uniform(rng, min(16, top_tokens), top_tokens))
        if fill and i == count - 1:
            n = room
        may_cache = i == 0 or not first_cached_only
        cached = _log_uniform(rng, 16, top_cached) if may_cache and top_cached and rng.random() < 0.5 else 0
        chunks.append((cached, n))
        room -= n
    return tuple(chunks)


def serving_composition(grid: ProfileGrid, rng: np.random.Generator, with_prefill: bool, min_context: int = 16):
    """One step of a loaded server (a chunked-prefill scheduler at its token budget): many decode
    rows (log-uniform in [max batch / 4, max batch]), their contexts lognormal (sigma 0.3-1.0) about
    a median log-uniform in [128, longest / 4]; in a third of the steps every context capped at a
    budget log-uniform in [64, longest / 8], as an evicting policy (StreamingLLM, H2O) keeps them
    (most rows at the cap), in half the others 1-3 of them long (log-uniform in [longest / 4,
    longest]: the long conversations a trace's tail brings). With prefill, 1-3
    chunks: the first half the time the rest of a prompt already partly prefilled (a log-uniform
    cached prefix), the others new prompts, the last taking what the token budget leaves (three
    steps in four; otherwise the queue ran dry and it is its own size)."""
    top_context, top_batch = max(grid.contexts), max(grid.batches)
    b = _log_uniform(rng, max(1, top_batch // 4), top_batch)
    if with_prefill:
        b = min(b, grid.step_tokens // 2)
    contexts = _contexts(grid, rng, b, (128, top_context // 4), rng.uniform(0.3, 1.0), min_context)
    if rng.random() < 1 / 3:  # an evicting policy's batch (the H100 profile of 2026-12-06 10:08 had no
        # decode-only row of 96+ rows all within 1,024 tokens: StreamingLLM's decode steps came out 4.8% fast)
        cap = _log_uniform(rng, max(min_context, 64), max(min_context, 64, top_context // 8))
        contexts = [min(c, cap) for c in contexts]
    elif rng.random() < 0.5:
        for i in rng.choice(b, size=min(b, int(rng.integers(1, 4))), replace=False):
            contexts[i] = _log_uniform(rng, max(1, top_context // 4), top_context)
    if not with_prefill:
        return contexts, ()
    count, fill = int(rng.integers(1, 4)), rng.random() < 0.75
    return contexts, _chunks(grid, rng, grid.step_tokens - b, count, fill, first_cached_only=True)


class Stopwatch:
    """Elapsed ms between start() and stop(): CUDA events on a GPU (the GPU timeline, as compute
    mode times a step), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self, busy: bool = False) -> None:
        """busy: queue a spin kernel first, so the time from the start event on is the GPU's work
        alone (the host launches it while the GPU spins), not how soon the host launched it."""
        if self.cuda:
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if busy:
                torch.cuda._sleep(BUSY_CYCLES)
            self.begin.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3

    def elapsed_ms(self) -> float:
        if self.cuda:
            self.end.synchronize()
            return self.begin.elapsed_time(self.end)
        return self.ms


class Timer:
    def __init__(self, device: torch.device, warmup: int, reps: int):
        self.cuda, self.warmup, self.reps = device.type == "cuda", warmup, reps
        self.watch = Stopwatch(device)

    def times(self, fn, reps: int | None = None, idle_s: float = 0.0, busy: bool = False) -> list[float]:
        """Seconds of each of `reps` calls of fn, back to back, or each after the GPU idled idle_s
        (the host sleeping after the previous call finished, as a serving loop's scheduler does);
        busy: the GPU's time alone (Stopwatch.start). A fn with a stage() (TimedStep) is staged
        before each start event."""
        times, watch, stage = [], self.watch, getattr(fn, "stage", None)
        for _ in range(reps or self.reps):
            if idle_s:
                time.sleep(idle_s)
            if stage is not None:  # a TimedStep: its inputs staged by the host first, untimed
                stage()
            watch.start(busy)
            fn()
            watch.stop()
            times.append(watch.elapsed_ms() / 1e3)
        return times

    def _median(self, fn, calls: int = 1, reps: int | None = None, busy: bool = False) -> float:
        return statistics.median(self.times(fn, reps, busy=busy)) / calls

    def step(self, fn) -> float:
        """A whole step as compute mode times it: the GPU idle before it, events around it."""
        for _ in range(self.warmup):
            fn()
        if self.cuda:
            torch.cuda.synchronize()
        return self._median(fn)

    def op(self, fn) -> float:
        """One call of a GPU op, replayed from a CUDA graph of enough calls to hide launches."""
        for _ in range(max(self.warmup, 1)):
            fn()
        if not self.cuda:
            return self._median(fn)
        calls = max(1, min(16, math.ceil(OP_TARGET_S / max(self._median(fn, reps=1, busy=True), 1e-6))))
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for _ in range(calls):
                    fn()
        except Exception as e:  # noqa: BLE001 - not capturable: eager calls back to back
            torch.cuda.synchronize()
            print(f"kvsim profile: graph capture failed ({e}); timing eagerly", file=sys.stderr)
            return self._median(lambda: [fn() for _ in range(calls)], calls, busy=True)
        graph.replay()
        return self._median(graph.replay, calls, busy=True)


@dataclass
class Section:
    """A table being measured: its columns, and what was skipped and why."""

    name: str
    columns: tuple[str, ...]
    rows: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    remeasured: list = field(default_factory=list)  # rows (first time) of spikes measured again

    def __post_init__(self):
        self.rows = {c: [] for c in self.columns}

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


class TimedStep:
    """A step as compute mode times it: calling it launches the staged inputs and samples, tokens
    back on the host (the timed part); Timer stages the inputs (the host's packing and copy) before
    its start event, as compute mode does. Called without a fresh stage, it stages first (warm-ups)."""

    def __init__(self, runner, batch, score_out=None, sampling=GREEDY, generator=None, windows=None):
        self.runner, self.batch, self.score_out, self.windows = runner, batch, score_out, windows
        self.sampling, self.generator = sampling, generator
        self.staged = None

    def stage(self) -> None:
        self.staged = self.runner.stage(self.batch, self.score_out, self.windows)

    def __call__(self) -> list[int]:
        if self.staged is None:  # graphs share one input buffer: every launch has its own stage
            self.stage()
        staged, self.staged = self.staged, None
        return sample(self.runner.launch(staged), self.sampling, self.generator).tolist()


class StepBench:
    """One model, one KV dtype: a paged store sized for the grid, the runner, inputs of any step."""

    def __init__(self, model: LlamaModel, kv_dtype: str, block_size: int, want_blocks: int):
        cfg, self.model = model.config, model
        self.device = model.embed_tokens.weight.device
        self.dtype = model.embed_tokens.weight.dtype
        block_bytes = kv_bytes_per_block(cfg, kv_dtype, block_size)
        room = (torch.cuda.mem_get_info(self.device)[0] * STORE_MEMORY_FRACTION if self.device.type == "cuda"
                else CPU_STORE_BYTES)
        self.num_blocks = max(1, min(want_blocks, int(room // block_bytes)))
        self.block_size, self.cfg, self.kv_dtype = block_size, cfg, kv_dtype
        self.store = PagedKVStore(cfg.num_layers, self.num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim,
                                  dtype=kv_dtype, device=self.device)
        self.runner = ModelRunner(model, self.store)
        self.sampler = torch.Generator().manual_seed(0)
        self.ids = torch.Generator().manual_seed(1)
        self.scale = cfg.head_dim ** -0.5
        self.pool: list[int] | None = None  # inputs()' blocks when none is given (scatter())

    def blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def fits(self, seq_lens: list[int]) -> bool:
        return (sum(self.blocks(n) for n in seq_lens) <= self.num_blocks
                and max(seq_lens) <= self.model.max_positions)

    def inputs(self, seq_lens: list[int], new: list[int], width: int = 0,
               pool: list[int] | None = None) -> list[StepInput]:
        """Sequence i reads seq_lens[i] slots after writing its last new[i] tokens; blocks in order,
        or taken in turn from `pool` (e.g. scattered(): the store's blocks in a seeded random order,
        as a serving run's tables look after many sequences came and went).
        width > 0 pads the last sequence's block table to that many blocks (entries past its length
        are never read): the step's table is that wide, as when one long sequence is in the batch,
        and the other rows keep their own tables (the runner pads them with zeros, as in serving;
        padding every row's list instead times host packing that serving does not pay)."""
        out, first, bs = [], 0, self.block_size
        pool = self.pool if pool is None else pool
        for i, (length, n) in enumerate(zip(seq_lens, new)):
            count = self.blocks(length)
            table = list(range(first, first + count)) if pool is None else pool[first:first + count]
            first += count
            if i == len(seq_lens) - 1:
                table += [table[-1]] * (width - len(table))
            start = length - n
            ids = torch.randint(0, self.cfg.vocab_size, (n,), generator=self.ids).tolist()
            slots = [table[p // bs] * bs + p % bs for p in range(start, length)]
            out.append(StepInput(ids, start, slots, table, length))
        return out

    def scattered(self, seed: int, blocks: int | None = None) -> list[int]:
        """The store's first `blocks` blocks (all: None) in a seeded random order, then the rest in
        order (a pool for inputs())."""
        k = self.num_blocks if blocks is None else max(1, min(blocks, self.num_blocks))
        head = torch.randperm(k, generator=torch.Generator().manual_seed(seed)).tolist()
        return head + list(range(k, self.num_blocks))

    def scatter(self, gib: float, seed: int = 0) -> None:
        """From now on inputs() takes its blocks from scattered(): the store's first `gib` GiB of
        blocks in a seeded random order, as a serving engine's tables look once sequences of that
        much KV memory came and went; 0: blocks in order."""
        per_block = kv_bytes_per_block(self.cfg, self.kv_dtype, self.block_size)
        self.pool = self.scattered(seed, int(gib * 2**30 // per_block)) if gib > 0 else None

    def step(self, batch: list[StepInput], scores: bool = False) -> TimedStep:
        """A whole step as compute mode runs it; scores: with the zeroed score buffers an eviction policy
        that reads attention passes (engine/backends/compute.py), allocated outside the timed call."""
        score_out = self.runner.score_buffers(batch) if scores else None
        return TimedStep(self.runner, batch, score_out, GREEDY, self.sampler)


    def tensors(self, seq_lens: list[int]):
        """(block_tables [B, max_blocks] int32, seq_lens [B] int32) for op calls."""
        tables = [s.block_table for s in self.inputs(seq_lens, [1] * len(seq_lens))]
        width = max(len(t) for t in tables)
        bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=self.device)
        return bt, torch.tensor(seq_lens, dtype=torch.int32, device=self.device)

    def randn(self, *shape):
        return torch.randn(*shape, dtype=self.dtype, device=self.device)

    # ---- ops (one layer) ---------------------------------------------------------------------
    def decode_attention(self, seq_lens: list[int]):
        k, v, scales = self.store.layer(0)
        q = self.randn(len(seq_lens), self.cfg.num_heads, self.cfg.head_dim)  # [B, Hq, D]
        bt, sl = self.tensors(seq_lens)
        return lambda: kernels.paged_decode_attention(q, k, v, bt, sl, self.scale, kv_scales=scales)

    def prefill_attention(self, seq_lens: list[int], new: list[int]):
        k, v, scales = self.store.layer(0)
        q = self.randn(sum(new), self.cfg.num_heads, self.cfg.head_dim)  # [T, Hq, D]
        bt, sl = self.tensors(seq_lens)
        cu = torch.tensor([0, *torch.tensor(new).cumsum(0).tolist()], dtype=torch.int32, device=self.device)
        return lambda: kernels.paged_prefill_attention(q, k, v, bt, cu, sl, self.scale, kv_scales=scales)

    def write_kv(self, tokens: int):
        k = self.randn(tokens, self.cfg.num_kv_heads, self.cfg.head_dim)  # [T, Hkv, D]
        v = self.randn(tokens, self.cfg.num_kv_heads, self.cfg.head_dim)
        slots = torch.arange(tokens, device=self.device)
        return lambda: self.store.write(0, k, v, slots)

    def linear(self, tokens: int):
        """The GEMMs of one Llama layer over `tokens` rows: QKV, O, gate-up, down."""
        c = self.cfg
        qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        shapes = [(qkv, c.hidden_size), (c.hidden_size, c.num_heads * c.head_dim),
                  (2 * c.intermediate_size, c.hidden_size), (c.hidden_size, c.intermediate_size)]
        pairs = [(self.randn(tokens, k), self.randn(n, k)) for n, k in shapes]
        return lambda: [F.linear(x, w) for x, w in pairs]

    def lm_head_sample(self, rows: int):
        h = self.randn(rows, self.cfg.hidden_size)
        return lambda: sample(self.model.lm_head(self.model.norm(h)).float(), GREEDY, self.sampler).tolist()
