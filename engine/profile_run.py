"""The sections of a profile, in the order the cost model needs them, measured until a deadline;
and the file's header (device, date, versions, model shape). See engine/profile.py for how a
point is timed and engine/profile_file.py for the format."""

from __future__ import annotations

import datetime
import platform
import time

import numpy as np
import torch

from engine.buckets import BATCH_BUCKETS, MAX_GRAPH_TOKENS, MIN_WIDTH_BLOCKS, SEQ_BUCKETS, TOKEN_BUCKETS
from engine.config import ModelConfig
from engine.profile import (
    RANDOM_STEP_REPS,
    ProfileGrid,
    Section,
    StepBench,
    Timer,
    coarse_first,
    every_other,
    random_compositions,
)
from engine.profile_file import (
    FORMAT,
    GRID_AXES,
    SHAPE_FIELDS,
    SCORED_DECODE_ROWS,
    TABLE_WIDTH_PADDING,
    TABLES,
    VERSION,
    composition,
    spikes,
    step_row,
)
from engine.runner import ModelRunner
from kvcache.sizing import kv_bytes_per_token


def _sections(grid: ProfileGrid, bench: StepBench, timer: Timer):
    """(table name, [(point, seq_lens it needs, thunk -> seconds)]) in the order they run."""
    bs = bench.block_size
    decode = [(b, c) for b in coarse_first(grid.batches) for c in grid.contexts]
    prefill = [(n, s) for s in grid.prefill_cached for n in coarse_first(grid.prefill_tokens)]
    skew = [(b, c) for b in coarse_first(every_other([b for b in grid.batches if b > 1] or [2]))
            for c in every_other(grid.contexts) if c > bs]
    tokens = sorted(set(grid.batches) | set(grid.prefill_tokens))
    c0 = min(grid.contexts)
    step, op = timer.step, timer.op
    random_timer = Timer(bench.device, grid.warmup, min(grid.reps, RANDOM_STEP_REPS))
    return [
        ("decode_step", [((b, c), [c] * b, lambda b=b, c=c: step(bench.step(bench.inputs([c] * b, [1] * b))))
                         for b, c in decode]),
        ("prefill_step", [((n, s), [s + n], lambda n=n, s=s: step(bench.step(bench.inputs([s + n], [n]))))
                          for n, s in prefill]),
        ("prefill_attention", [((n, s), [s + n], lambda n=n, s=s: op(bench.prefill_attention([s + n], [n])))
                               for n, s in prefill]),
        ("lm_head_sample", [((r,), [1], lambda r=r: step(bench.lm_head_sample(r))) for r in grid.batches]),
        ("mixed_step", [((n, s, b, c), [s + n] + [c] * b,
                         lambda n=n, s=s, b=b, c=c: step(bench.step(bench.inputs([s + n] + [c] * b, [n] + [1] * b))))
                        for n, s, b, c in grid.mixed()]),
        ("decode_attention", [((b, c), [c] * b, lambda b=b, c=c: op(bench.decode_attention([c] * b)))
                              for b, c in decode]),
        ("decode_attention_skew", [((b, c), [c] + [bs] * (b - 1),
                                    lambda b=b, c=c: op(bench.decode_attention([c] + [bs] * (b - 1))))
                                   for b, c in skew]),
        ("write_kv", [((t,), [t], lambda t=t: op(bench.write_kv(t))) for t in tokens]),
        ("linear", [((t,), [1], lambda t=t: op(bench.linear(t))) for t in tokens]),
        ("table_width", [((n, b, w), [n] * bool(n) + [c0] * b,
                          lambda n=n, b=b, w=w: step(bench.step(bench.inputs([n] * bool(n) + [c0] * b,
                                                                             [n] * bool(n) + [1] * b, w))))
                         for n, b, w in grid.widths(bs)]),
        ("random_steps", _random_steps(grid, bench, random_timer)),
        ("scored_steps", _random_steps(grid, bench, random_timer, scored=True)),
    ]


def _random_steps(grid: ProfileGrid, bench: StepBench, timer: Timer, scored: bool = False) -> list:
    """Whole steps of seeded random compositions (the calibrated model fits its correction to them;
    a CPU profile, for tests only, measures 2 of each kind). scored: other compositions (seed 1),
    each step keeping attention scores as under H2O."""
    count = grid.scored_steps if scored else grid.random_steps
    count = count if bench.device.type == "cuda" else min(count, 2)
    points = []
    for contexts, chunks in random_compositions(grid, np.random.default_rng(int(scored)), count, bench.block_size):
        shape = composition([sum(contexts), max(contexts, default=0)], len(contexts), chunks)
        seq_lens, new = [s + n for s, n in chunks] + contexts, [n for _, n in chunks] + [1] * len(contexts)
        row = step_row(shape, bench.block_size, bench.runner.graph_buckets, MIN_WIDTH_BLOCKS)
        points.append((row, seq_lens,
                       lambda s=seq_lens, n=new: timer.step(bench.step(bench.inputs(s, n), scores=scored))))
    return points


def _run_section(name: str, points, bench: StepBench, deadline: float, log) -> Section:
    section = Section(name, TABLES[name])
    started = time.perf_counter()
    thunks = []  # each row's measurement, to take again
    for point, seq_lens, measure in points:
        if time.perf_counter() > deadline:
            section.skip("budget")
            continue
        if not bench.fits(seq_lens):
            section.skip("memory")
            continue
        try:
            seconds = measure()
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            section.skip("memory")
            continue
        except Exception as e:  # noqa: BLE001 - one bad point must not cost the rest of the profile
            section.errors.append(f"{name}{point}: {type(e).__name__}: {e}"[:300])
            continue
        for col, value in zip(section.columns, (*point, float(f"{seconds:.6g}"))):
            section.rows[col].append(value)
        thunks.append(measure)
    if name in GRID_AXES:  # a spike is measured once more (the machine may have been busy for its reps)
        for i in spikes(section.rows, *GRID_AXES[name]):
            if time.perf_counter() > deadline:
                break
            section.remeasured.append([section.rows[c][i] for c in section.columns])
            again = thunks[i]()  # a busy machine only adds time: the lower of the two
            section.rows["time_s"][i] = min(section.rows["time_s"][i], float(f"{again:.6g}"))
    notes = [f"{n} skipped ({why})" for why, n in section.skipped.items()]
    notes += [f"{len(section.errors)} failed"] if section.errors else []
    notes += [f"{len(section.remeasured)} spikes measured again"] if section.remeasured else []
    log(f"  {name}: {len(section.rows['time_s'])} points in {time.perf_counter() - started:.1f} s"
        + "".join(", " + n for n in notes))
    return section


def _overhead(tables: dict, layers: int) -> dict:
    """A decode step minus the sum of its ops (framework, norms, RoPE, launches), where all were measured."""
    def lookup(name):
        t = tables.get(name, {})
        cols = [t.get(k, []) for k in TABLES[name][:-1]]
        return {tuple(k): v for k, v in zip(zip(*cols), t.get("time_s", []))}

    lin, write, head = lookup("linear"), lookup("write_kv"), lookup("lm_head_sample")
    attn, out = lookup("decode_attention"), {c: [] for c in TABLES["decode_overhead"]}
    for (b, c), step in lookup("decode_step").items():
        parts = [lin.get((b,)), write.get((b,)), attn.get((b, c)), head.get((b,))]
        if None in parts:
            continue
        ops = layers * (parts[0] + parts[1] + parts[2]) + parts[3]
        for col, value in zip(out, (b, c, step - ops)):
            out[col].append(value)
    return out


def measure_kv_dtype(model, kv_dtype: str, grid: ProfileGrid, block_size: int, deadline: float, log,
                     scatter_gib: float = 0.0) -> dict:
    """The profile's entry for one KV dtype: its tables, and what was skipped or failed. scatter_gib:
    every step's block tables taken from that much KV memory's blocks in a seeded random order
    (StepBench.scatter; 0: in order)."""
    device = model.embed_tokens.weight.device
    timer = Timer(device, grid.warmup, grid.reps)
    blocks = lambda tokens: -(-tokens // block_size)
    want = max(max(grid.batches) * blocks(max(grid.contexts)),
               blocks(max(grid.prefill_cached) + max(grid.prefill_tokens)),
               max(blocks(s + n) + b * blocks(c) for n, s, b, c in grid.mixed()),
               6 * blocks(max(grid.prefill_cached) + max(grid.prefill_tokens))  # random steps' chunks
               + max(grid.batches) * blocks(max(grid.contexts)))
    with torch.inference_mode():
        bench = StepBench(model, kv_dtype, block_size, want)
        bench.scatter(scatter_gib)
        log(f"{kv_dtype}: KV store of {bench.num_blocks} blocks of {block_size} tokens, "
            f"model in {model.embed_tokens.weight.dtype}")
        sections = [_run_section(name, points, bench, deadline, log) for name, points in _sections(grid, bench, timer)]
    tables = {s.name: s.rows for s in sections if s.rows["time_s"]}
    overhead = _overhead(tables, model.config.num_layers)
    if overhead["time_s"]:
        tables["decode_overhead"] = overhead
    del bench
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"model_dtype": str(model.embed_tokens.weight.dtype).removeprefix("torch."),
            "kv_bytes_per_token": kv_bytes_per_token(model.config, kv_dtype), "tables": tables,
            "skipped": {s.name: s.skipped for s in sections if s.skipped},
            "errors": [e for s in sections for e in s.errors],
            "remeasured": {s.name: s.remeasured for s in sections if s.remeasured}}


def measure_memory(device: torch.device, timer: Timer) -> dict:
    """Bandwidths of a device copy (block copies) and, on a GPU, of the host link (swap)."""
    size = (256 if device.type == "cuda" else 16) << 20
    src, dst = torch.empty(size, dtype=torch.uint8, device=device), torch.empty(size, dtype=torch.uint8, device=device)
    out = {"copy_bytes_per_s": size / timer.op(lambda: dst.copy_(src))}
    if device.type == "cuda":
        host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
        out["host_to_device_bytes_per_s"] = size / timer.step(lambda: dst.copy_(host, non_blocking=True))
        out["device_to_host_bytes_per_s"] = size / timer.step(lambda: host.copy_(src, non_blocking=True))
    return out


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("kvsim", "triton"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def graph_settings(device: torch.device) -> dict:
    """The CUDA-graph buckets steps are padded to (engine/runner.py); none where steps run eagerly."""
    if not ModelRunner.graphs_by_default(device):
        return {"cuda_graphs": False}
    return {"cuda_graphs": True, "batch_buckets": BATCH_BUCKETS, "min_width_blocks": MIN_WIDTH_BLOCKS,
            "token_buckets": [b for b in TOKEN_BUCKETS if b <= MAX_GRAPH_TOKENS], "seq_buckets": SEQ_BUCKETS}


def header(cfg: ModelConfig, gpu: str, device: torch.device, block_size: int, grid: ProfileGrid,
           quick: bool, budget_s: float, argv: list[str], scatter_gib: float = 0.0) -> dict:
    cuda, graph = device.type == "cuda", graph_settings(device)
    name = torch.cuda.get_device_name(device) if cuda else f"cpu: {platform.processor() or platform.machine()}"
    return {"format": FORMAT, "version": VERSION, "gpu": gpu, "device_name": name,
            "timer": "cuda_events" if cuda else "perf_counter",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "command": " ".join(["kvsim", *argv]),
            "model": {"name": cfg.name, **{f: getattr(cfg, f) for f in SHAPE_FIELDS}},
            "block_size": block_size,
            "settings": {"warmup": grid.warmup, "reps": grid.reps, "quick": quick, "budget_s": budget_s,
                         "op_timing": "a CUDA graph of calls, its start event after a GPU spin (launch excluded)"
                         if cuda else "perf_counter",
                         "random_steps": {"per_kind": grid.random_steps, "reps": min(grid.reps, RANDOM_STEP_REPS), "seed": 0,
                                          "step_tokens": grid.step_tokens,
                                          "families": "broad and serving, two of each in turn (engine/profile.py)"},
                         "scored_steps": {"per_kind": grid.scored_steps, "seed": 1},
                         "scored_prefill": "in the step's CUDA graph, scored by kernels/prefill_scores.py"
                         if graph.get("cuda_graphs") else "eager, scored by kernels/prefill_scores.py",
                         "scored_decode_rows": SCORED_DECODE_ROWS,
                         "table_width": {"padded_rows": TABLE_WIDTH_PADDING},
                         "block_tables": (f"scattered: the first {scatter_gib:g} GiB of blocks in a seeded random order "
                                          "(seed 0)" if scatter_gib > 0 else "contiguous"),
                         "graph": graph,
                         "grid": {k: list(v) for k, v in vars(grid).items() if isinstance(v, tuple)}},
            "kv_dtypes": {}}
