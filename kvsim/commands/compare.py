"""Compare KV cache policies, dtypes and budgets on one trace: for every combination, what it
saves (throughput, latency, peak KV bytes, sequences held at once, preemptions) beside what it
costs (the quality columns of `kvsim quality`, joined from its quality.csv) in one table.

The defaults are the main job: the shipped Azure 2023 conversation slice replayed 50x faster
(about 240 requests/s), SmolLM2-135M with 1 GiB of KV cache on the H100 roofline, full /
streaming / h2o at a 512-token budget, in fp16 and INT8. SmolLM2's KV is 22.5 KiB per fp16
token, so a whole H100 (3M tokens of KV) never runs short and nothing would differ; 1 GiB holds
about 46k fp16 tokens (34 requests of the slice's mean length), and at this rate that binds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kvsim.config import opt
from kvsim.options import EngineOptions, GridOptions, OutputOptions, ParallelOptions, WorkloadOptions

NAME = "compare"
HELP = "compare policies x KV dtypes x budgets on one trace (savings and quality side by side)"
DEFAULTS = {"workload.rate_scale": 50.0, "engine.kv_mem_gib": 1.0}
QUALITY_KEYS = ("policy", "budget", "kv_dtype")


@dataclass(frozen=True)
class Config:
    workload: WorkloadOptions = field(default_factory=WorkloadOptions)
    engine: EngineOptions = field(default_factory=EngineOptions)
    grid: GridOptions = field(default_factory=GridOptions)
    quality: str | None = opt(None, "quality.csv written by `kvsim quality` (columns policy, budget, kv_dtype, "
                                    "ppl, top1_agreement, kl), joined on (policy, budget, kv_dtype)", metavar="CSV")
    parallel: ParallelOptions = field(default_factory=ParallelOptions)
    output: OutputOptions = field(default_factory=OutputOptions)


def read_quality(path: str | None):
    """quality.csv as a DataFrame (checked before any simulation runs), or None."""
    if path is None:
        return None
    import pandas as pd

    from engine.errors import KvsimError
    from kvsim.tables import QUALITY_COLUMNS

    try:
        quality = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise KvsimError(f"--quality {path}: cannot read it as CSV ({' '.join(str(e).split())})") from None
    missing = [c for c in (*QUALITY_KEYS, *QUALITY_COLUMNS) if c not in quality]
    if missing:
        raise KvsimError(f"--quality {path}: missing columns {missing}; expected "
                         f"{', '.join((*QUALITY_KEYS, *QUALITY_COLUMNS))}")
    return quality


def join_quality(records: list[dict], quality) -> None:
    """Add ppl, top1_agreement, kl to each record (None where quality.csv has no such row)."""
    from kvsim.tables import QUALITY_COLUMNS

    for r in records:
        r.update({c: None for c in QUALITY_COLUMNS})
        if quality is None:
            continue
        rows = quality[(quality.policy == r["policy"]) & (quality.kv_dtype == r["kv_dtype"])]
        if r["policy"] != "full":  # the full cache keeps everything: its budget column does not matter
            rows = rows[rows.budget == r["budget_tokens"]]
        if len(rows):
            r.update({c: float(rows[c].iloc[0]) for c in QUALITY_COLUMNS})


def run(config: Config, argv: list[str]) -> int:
    from kvsim.outputs import records_of, show, write_config, write_run
    from kvsim.parallel import run_points
    from kvsim.progress import wanted
    from kvsim.rundir import new_run_dir
    from kvsim.simulate import Point, key_of, load_trace

    started = time.perf_counter()
    load_trace(config.workload)  # a bad trace or quality file fails here, once, not in every worker
    quality = read_quality(config.quality)
    run_dir = new_run_dir(config.output.out, NAME)
    write_config(run_dir, config, DEFAULTS)
    points = [Point(key_of(cache), config.engine, cache, config.output.seed, workload=config.workload)
              for cache in config.grid.cache_points()]
    results, counts = run_points(points, run_dir, config.parallel, progress=wanted(config.output.progress))
    records = records_of(results)
    join_quality(records, quality)
    extra = {"default_trace": config.workload.trace is None, "quality": config.quality, **counts}
    written = write_run(run_dir, NAME, argv, config, DEFAULTS, results, records, extra, started)
    show(records, written, config.output.json)
    return 0
