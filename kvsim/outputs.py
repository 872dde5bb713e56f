"""What every simulation command leaves behind: the resolved config, the summary (JSON, Parquet,
CSV), the per-request / per-step / per-session tables of all points (a `point` column and the
point's parameters in front), run.json, the plots and report.html; and what it prints: the
summary table, or with --json one JSON value on stdout."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from kvsim.config_io import to_toml
from kvsim.rundir import dumps, manifest, write_json, write_table, write_text
from kvsim.simulate import PointResult
from kvsim.tables import render, summary_frame

TABLES = ("requests", "steps", "sessions")


def with_point(result: PointResult, df: pd.DataFrame) -> pd.DataFrame:
    front = pd.DataFrame({"point": result.key, **{k: [v] * len(df) for k, v in result.params.items()}},
                         index=df.index)
    return pd.concat([front, df], axis=1)


def records_of(results: list[PointResult]) -> list[dict]:
    return [{"point": r.key, **r.record()} for r in results]


def write_config(run_dir: Path, config, defaults: dict | None) -> None:
    write_text(Path(run_dir) / "config.toml", to_toml(config, defaults))


def write_run(run_dir: Path, command: str, argv: list[str], config, defaults: dict | None,
              results: list[PointResult], records: list[dict], extra: dict, started: float,
              single: bool = False) -> Path:
    """Write every file of a finished run; returns report.html's path (or run_dir without one)."""
    run_dir = Path(run_dir)
    write_config(run_dir, config, defaults)
    for name in TABLES:
        frames = [with_point(r, getattr(r, name)) for r in results if len(getattr(r, name))]
        if frames:
            write_table(run_dir, name, pd.concat(frames, ignore_index=True))
    write_json(run_dir / "summary.json", records[0] if single else records)
    write_table(run_dir, "summary", pd.DataFrame(records))
    info = manifest(command, argv, {**extra, "wall_time_s": time.perf_counter() - started})
    write_json(run_dir / "run.json", info)
    if not config.output.report:
        return run_dir
    from kvsim.report import build

    return build(run_dir)


def show(records: list[dict], written: Path, as_json: bool, single: bool = False) -> None:
    """The summary table (stderr under --json, else stdout), then the JSON on stdout."""
    table = render(summary_frame(records))
    where = sys.stderr if as_json else sys.stdout
    print(table, file=where)
    print(f"\nwritten: {written}", file=where)
    if as_json:
        print(dumps(records[0] if single else records))
