"""Replay a request trace through one engine configuration: TTFT, TPOT, throughput and KV memory,
as a table, Parquet/CSV tables, plots and an HTML report in the run directory."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kvsim.options import CacheOptions, EngineOptions, OutputOptions, WorkloadOptions

NAME = "replay"
HELP = "replay a trace through one engine and KV cache configuration"
DEFAULTS: dict = {}


@dataclass(frozen=True)
class Config:
    workload: WorkloadOptions = field(default_factory=WorkloadOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    cache: CacheOptions = field(default_factory=CacheOptions)
    output: OutputOptions = field(default_factory=OutputOptions)


def run(config: Config, argv: list[str]) -> int:
    from kvsim.outputs import records_of, show, write_config, write_run
    from kvsim.progress import wanted
    from kvsim.rundir import new_run_dir
    from kvsim.simulate import Point, existing_trace, key_of, run_point

    started = time.perf_counter()
    existing_trace(config.workload)
    run_dir = new_run_dir(config.output.out, NAME)
    write_config(run_dir, config, DEFAULTS)  # first, so even a failed run says what it was
    point = Point(key_of(config.cache), config.engine, config.cache, config.output.seed, workload=config.workload)
    result = run_point(point, progress=wanted(config.output.progress))
    records = records_of([result])
    extra = {"default_trace": config.workload.trace is None}
    written = write_run(run_dir, NAME, argv, config, DEFAULTS, [result], records, extra, started, single=True)
    show(records, written, config.output.json, single=True)
    return 0
