"""BurstGPT (HPMLL/BurstGPT) CSV: Timestamp (s), Model, Request tokens, Response tokens, ...

Oddities handled: a row with 0 request or 0 response tokens is a failed request in this format:
it is skipped and counted as `failed_request` even without `skip_invalid`. `Session ID` (newer
releases) becomes `session_id`; `Elapsed time`, `Total tokens` and `Log Type` are not used.
"""

from __future__ import annotations

from os import PathLike
from typing import Callable

from workloads.table import Trace
from workloads.textfile import read_csv
from workloads.validate import build_trace

SIGNATURE = frozenset({"Request tokens", "Response tokens", "Log Type"})


def read(
    path: str | PathLike, *, skip_invalid: bool = False, count_tokens: Callable[[str], int] | None = None
) -> Trace:
    csv, checker = read_csv(path, skip_invalid)
    raw_times = csv.column("Timestamp")
    raw_model = csv.column("Model")
    raw_prompt = csv.column("Request tokens")
    raw_output = csv.column("Response tokens")
    raw_session = csv.column("Session ID") if csv.has("Session ID") else None
    times = checker.times(raw_times, "Timestamp")
    prompt = checker.integers(raw_prompt, "Request tokens", zero_ok=True)
    output = checker.integers(raw_output, "Response tokens", zero_ok=True)
    checker.drop(
        (prompt == 0) | (output == 0),
        "failed_request",
        "Request tokens, Response tokens",
        lambda row: f"{raw_prompt[row]}, {raw_output[row]}",
        "> 0 tokens in both (0 marks a failed request)",
    )
    return build_trace(
        checker,
        format="burstgpt",
        times=times,
        time_column="Timestamp",
        raw_times=raw_times,
        units_per_second=1.0,
        prompt_tokens=prompt,
        output_tokens=output,
        session_id=None if raw_session is None else checker.strings(raw_session, "Session ID"),
        model=checker.strings(raw_model, "Model"),
    )
