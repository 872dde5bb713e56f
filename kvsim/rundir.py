"""Run directories and the files in them. Every file is written to a temporary name beside its
target and renamed into place, so an interrupted run never leaves a partial file under a real
name (a killed process can leave a `.*.tmp-PID` file, which every reader ignores)."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from engine.errors import KvsimError


def new_run_dir(out: str | None, command: str) -> Path:
    """--out DIR (created, may exist: a rerun resumes there), else runs/<command>-<timestamp>."""
    if out:
        path = Path(out)
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{command}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{command}-{stamp}-{n}"
    if path.exists() and not path.is_dir():
        raise KvsimError(f"--out {path}: exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """write(tmp) then rename tmp -> path; the temporary file goes away whatever happens."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic(path, lambda tmp: tmp.write_text(text))


def jsonable(value):
    """NaN/inf -> None and numpy scalars -> Python, so the JSON is strict."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value) -> str:
    return json.dumps(jsonable(value), indent=2, allow_nan=False)


def write_json(path: Path, value) -> Path:
    return write_text(path, dumps(value) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def _csv_ready(df: pd.DataFrame) -> pd.DataFrame:
    """CSV cannot hold lists: list columns (itl_ms) stay in the Parquet file only."""
    lists = [c for c in df.columns if df[c].dtype == object and len(df) and isinstance(df[c].iloc[0], (list, tuple))]
    return df.drop(columns=lists)


def write_table(directory: Path, name: str, df: pd.DataFrame, csv: bool = True) -> None:
    """NAME.parquet (every column) and NAME.csv (every column that is not a list)."""
    atomic(Path(directory) / f"{name}.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    if csv:
        atomic(Path(directory) / f"{name}.csv", lambda tmp: _csv_ready(df).to_csv(tmp, index=False))


def read_table(directory: Path, name: str) -> pd.DataFrame | None:
    path = Path(directory) / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def manifest(command: str, argv: list[str], extra: dict) -> dict:
    import platform
    import sys
    from importlib.metadata import PackageNotFoundError, version

    try:
        kvsim_version = version("kvsim")
    except PackageNotFoundError:
        kvsim_version = "unknown"
    return {"command": command, "argv": ["kvsim", *argv], "kvsim_version": kvsim_version,
            "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "platform": platform.platform(), **extra}
