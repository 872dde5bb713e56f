"""Mooncake (kvcache-ai/Mooncake FAST'25) JSON lines: timestamp (ms), input_length, output_length, hash_ids.

Oddities handled: timestamps are integer milliseconds and many requests share one. hash_ids holds
one id per 512-token block of the prompt (the last block partial); the format promises
len(hash_ids) == ceil(input_length / 512) and a row that breaks it is invalid.
"""

from __future__ import annotations

from os import PathLike
from typing import Callable

from workloads.table import Trace
from workloads.textfile import read_json_lines
from workloads.validate import build_trace

SIGNATURE = frozenset({"hash_ids", "input_length", "output_length"})
BLOCK_SIZE = 512
_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def read(
    path: str | PathLike, *, skip_invalid: bool = False, count_tokens: Callable[[str], int] | None = None
) -> Trace:
    raw, checker = read_json_lines(path, _KEYS, _KEYS, skip_invalid)
    times = checker.times(raw["timestamp"], "timestamp")
    prompt = checker.integers(raw["input_length"], "input_length")
    output = checker.integers(raw["output_length"], "output_length")
    return build_trace(
        checker,
        format="mooncake",
        times=times,
        time_column="timestamp",
        raw_times=raw["timestamp"],
        units_per_second=1e3,
        prompt_tokens=prompt,
        output_tokens=output,
        prefix_block_ids=checker.block_ids(raw["hash_ids"], "hash_ids", prompt, BLOCK_SIZE, exact=True),
        prefix_block_size=BLOCK_SIZE,
    )
