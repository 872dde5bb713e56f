"""Vidur / Splitwise processed traces: arrived_at (s, relative), num_prefill_tokens, num_decode_tokens.

Oddities handled: extra columns (an unnamed index, `num_total_tokens`, `pd_ratio`) are ignored.
"""

from __future__ import annotations

from os import PathLike
from typing import Callable

from workloads.table import Trace
from workloads.textfile import read_csv
from workloads.validate import build_trace

SIGNATURE = frozenset({"arrived_at", "num_prefill_tokens", "num_decode_tokens"})


def read(
    path: str | PathLike, *, skip_invalid: bool = False, count_tokens: Callable[[str], int] | None = None
) -> Trace:
    csv, checker = read_csv(path, skip_invalid)
    raw_times = csv.column("arrived_at")
    raw_prompt = csv.column("num_prefill_tokens")
    raw_output = csv.column("num_decode_tokens")
    return build_trace(
        checker,
        format="vidur",
        times=checker.times(raw_times, "arrived_at"),
        time_column="arrived_at",
        raw_times=raw_times,
        units_per_second=1.0,
        prompt_tokens=checker.integers(raw_prompt, "num_prefill_tokens"),
        output_tokens=checker.integers(raw_output, "num_decode_tokens"),
    )
