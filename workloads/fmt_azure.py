"""Azure LLM inference traces 2023 (Splitwise) and 2024 (DynamoLLM): TIMESTAMP, ContextTokens, GeneratedTokens.

Oddities handled: TIMESTAMP is absolute wall-clock time with 7 fractional digits (100 ns ticks,
no zone; a UTC offset is honoured where a file has one). arrival_s is taken from the first valid
row in integer nanoseconds, so the ticks survive. Lines end in CRLF and the last has no newline.
"""

from __future__ import annotations

from os import PathLike
from typing import Callable

import numpy as np
import pandas as pd

from workloads.table import Trace
from workloads.textfile import read_csv
from workloads.validate import RowChecker, build_trace

SIGNATURE = frozenset({"TIMESTAMP", "ContextTokens", "GeneratedTokens"})
_NOT_A_TIME = np.iinfo(np.int64).min  # pandas' NaT as int64


def read(
    path: str | PathLike, *, skip_invalid: bool = False, count_tokens: Callable[[str], int] | None = None
) -> Trace:
    csv, checker = read_csv(path, skip_invalid)
    raw_times = csv.column("TIMESTAMP")
    raw_prompt = csv.column("ContextTokens")
    raw_output = csv.column("GeneratedTokens")
    times = _nanoseconds(checker, raw_times)
    return build_trace(
        checker,
        format="azure",
        times=times,
        time_column="TIMESTAMP",
        raw_times=raw_times,
        units_per_second=1e9,
        prompt_tokens=checker.integers(raw_prompt, "ContextTokens"),
        output_tokens=checker.integers(raw_output, "GeneratedTokens"),
    )


def _nanoseconds(checker: RowChecker, raw: np.ndarray) -> np.ndarray:
    """Wall-clock timestamps as int64 ns since the epoch (UTC where the file gives a zone)."""
    expected = "a time like 2023-11-16 18:15:46.6805900"
    checker.reject(raw == "", "missing_value", "TIMESTAMP", raw, expected)
    try:
        parsed = pd.to_datetime(pd.Series(raw, dtype=object), format="ISO8601", errors="coerce", utc=True)
        ns = parsed.astype("datetime64[ns, UTC]").array.asi8
    except (ValueError, TypeError, OverflowError):  # a value pandas will not coerce: one at a time
        ns = np.fromiter((_one_time(value) for value in raw), dtype=np.int64, count=len(raw))
    checker.reject(ns == _NOT_A_TIME, "bad_timestamp", "TIMESTAMP", raw, expected)
    return ns


def _one_time(value: str) -> int:
    try:
        stamp = pd.to_datetime(value, format="ISO8601", utc=True)
        return _NOT_A_TIME if stamp is pd.NaT else stamp.as_unit("ns").value
    except (ValueError, TypeError, OverflowError):
        return _NOT_A_TIME
