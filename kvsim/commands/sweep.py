"""Throughput and latency against the number of concurrent sessions (closed-loop clients), one
curve per policy and KV dtype, with the knee marked: the smallest number of sessions after
which each doubling adds less than --knee-gain (5%) throughput, i.e. where KV memory (or the
batch limit) saturates and eviction or quantization would move it.

Defaults: SmolLM2-135M with 1 GiB of KV cache on the H100 roofline (memory binds at a few dozen
sessions, see `kvsim compare --help`), full and streaming at 512 tokens, fp16 and INT8,
1..256 sessions without think time, 20 simulated seconds each (the first 5 not measured)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kvsim.closed_loop import SessionOptions
from kvsim.options import EngineOptions, GridOptions, OutputOptions, ParallelOptions

NAME = "sweep"
HELP = "throughput and latency vs concurrent sessions, the knee marked"
DEFAULTS = {"engine.kv_mem_gib": 1.0, "grid.policies": ("full", "streaming")}


@dataclass(frozen=True)
class Config:
    sessions: SessionOptions = field(default_factory=SessionOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    grid: GridOptions = field(default_factory=GridOptions)
    parallel: ParallelOptions = field(default_factory=ParallelOptions)
    output: OutputOptions = field(default_factory=OutputOptions)


def mark_knees(records: list[dict], gain: float) -> dict[str, int | None]:
    """Set knee_sessions and is_knee on every record; returns {curve label: knee}."""
    from kvsim.closed_loop import knee
    from kvsim.plots import label

    curves: dict[str, list[dict]] = {}
    for r in records:
        curves.setdefault(label(r), []).append(r)
    knees = {}
    for name, rows in curves.items():
        n = knee([r["num_sessions"] for r in rows], [r["output_tokens_per_s"] for r in rows], gain)
        knees[name] = n
        for r in rows:
            r["knee_sessions"], r["is_knee"] = n, r["num_sessions"] == n
    return knees


def run(config: Config, argv: list[str]) -> int:
    from kvsim.outputs import records_of, show, write_config, write_run
    from kvsim.parallel import run_points
    from kvsim.progress import wanted
    from kvsim.rundir import new_run_dir
    from kvsim.simulate import Point, key_of

    started = time.perf_counter()
    run_dir = new_run_dir(config.output.out, NAME)
    write_config(run_dir, config, DEFAULTS)
    points = [Point(key_of(cache, f"-n{n}"), config.engine, cache, config.output.seed,
                    sessions=config.sessions, num_clients=n)
              for cache in config.grid.cache_points() for n in config.sessions.sessions]
    results, counts = run_points(points, run_dir, config.parallel, progress=wanted(config.output.progress))
    records = records_of(results)
    knees = mark_knees(records, config.sessions.knee_gain)
    extra = {"default_trace": config.sessions.trace is None, "knees": knees,
             "knee_gain": config.sessions.knee_gain, **counts}
    written = write_run(run_dir, NAME, argv, config, DEFAULTS, results, records, extra, started)
    show(records, written, config.output.json)
    return 0
