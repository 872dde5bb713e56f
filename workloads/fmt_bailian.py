"""Alibaba Bailian / Qwen usage traces, JSON lines: chat_id, parent_chat_id, timestamp (s), input_length,
output_length, type, turn, hash_ids.

Oddities handled: each line is one request; `parent_chat_id` (-1 or null for a first turn) names
the previous turn's `chat_id`, and `parent_id` links to that row when it is in the file. A
session is a chain of parents: `session_id` is the chat_id at its root (the earliest ancestor in
the file). hash_ids hold one id per 16-token block; their count is not promised, so only their
type is checked. `type` (text, image, ...) is not used.
"""

from __future__ import annotations

from os import PathLike
from typing import Callable

import numpy as np
import pandas as pd

from workloads.table import Trace
from workloads.textfile import read_json_lines
from workloads.validate import build_trace

SIGNATURE = frozenset({"chat_id", "parent_chat_id"})
BLOCK_SIZE = 16
_REQUIRED = ("chat_id", "parent_chat_id", "timestamp", "input_length", "output_length", "turn", "hash_ids")


def read(
    path: str | PathLike, *, skip_invalid: bool = False, count_tokens: Callable[[str], int] | None = None
) -> Trace:
    raw, checker = read_json_lines(path, _REQUIRED, _REQUIRED, skip_invalid)
    chat_id = checker.strings(raw["chat_id"], "chat_id")
    checker.reject(pd.isna(chat_id), "missing_value", "chat_id", raw["chat_id"], "a request id")
    parent = checker.strings(raw["parent_chat_id"], "parent_chat_id")
    parent[parent == "-1"] = None
    times = checker.times(raw["timestamp"], "timestamp")
    prompt = checker.integers(raw["input_length"], "input_length")
    output = checker.integers(raw["output_length"], "output_length")
    turn = checker.integers(raw["turn"], "turn", zero_ok=True)
    block_ids = checker.block_ids(raw["hash_ids"], "hash_ids", prompt, BLOCK_SIZE, exact=False)
    checker.unique(chat_id, "chat_id")
    trace = build_trace(
        checker,
        format="bailian",
        times=times,
        time_column="timestamp",
        raw_times=raw["timestamp"],
        units_per_second=1.0,
        prompt_tokens=prompt,
        output_tokens=output,
        turn=turn,
        keys=chat_id,
        parent_keys=parent,
        prefix_block_ids=block_ids,
        prefix_block_size=BLOCK_SIZE,
    )
    trace.requests["session_id"] = _session_roots(chat_id[checker.alive], trace.requests["parent_id"])
    return trace


def _session_roots(chat_id: np.ndarray, parent_id) -> np.ndarray:
    """The chat_id at the root of each row's parent chain (a parent listed later starts a new chain)."""
    parent = parent_id.fillna(-1).to_numpy(dtype=np.int64)
    root = np.arange(len(parent))
    for row, up in enumerate(parent):
        if 0 <= up < row:
            root[row] = root[up]
    return chat_id[root]
