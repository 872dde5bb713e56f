"""The request table every reader, transform and generator returns: its columns, `Trace`, `TraceSummary`.

One row is one request. Columns (always all present, in this order):

| column | dtype | meaning |
|---|---|---|
| `request_id` | int64 | 0..n-1 in arrival order |
| `arrival_s` | float64 | seconds from the trace's start, ascending (a file's first kept request: 0) |
| `prompt_tokens` | int64 | prompt (prefill) length, >= 1 |
| `output_tokens` | int64 | output (decode) length, >= 1 |
| `session_id` | object | str, or None where the source has no sessions |
| `turn` | Int64 | turn number within the session (1 = first), or <NA> |
| `parent_id` | Int64 | `request_id` of the previous turn in this table, or <NA> |
| `prefix_block_ids` | object | tuple of ints, one per `prefix_block_size` tokens of the prompt, or None |
| `model` | object | str, or None |
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

COLUMNS = (
    "request_id",
    "arrival_s",
    "prompt_tokens",
    "output_tokens",
    "session_id",
    "turn",
    "parent_id",
    "prefix_block_ids",
    "model",
)


@dataclass(frozen=True)
class TraceSummary:
    """What happened to the rows of a source: every row read is either kept or skipped for a reason."""

    rows_read: int
    rows_kept: int
    skipped: Mapping[str, int] = field(default_factory=dict)  # reason -> rows
    examples: Mapping[str, str] = field(default_factory=dict)  # reason -> first error message

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        text = f"{self.rows_read} rows read, {self.rows_kept} kept"
        if self.skipped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()))
            text += f", skipped: {reasons}"
        return text


@dataclass(frozen=True)
class Trace:
    """A request table (`requests`, columns `COLUMNS`) and where it came from."""

    requests: pd.DataFrame
    summary: TraceSummary
    prefix_block_size: int | None  # tokens per entry of `prefix_block_ids`; None without them
    source: str  # the file read, or a description of the generator
    format: str  # reader name ("azure", "mooncake", ...) or "synthetic"

    def __len__(self) -> int:
        return len(self.requests)

    def with_requests(self, requests: pd.DataFrame) -> Trace:
        """This trace with a subset or edit of its rows: sorted by arrival, renumbered, parents remapped."""
        return replace(self, requests=renumber(requests))


def make_table(
    arrival_s: np.ndarray,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    *,
    session_id: Sequence[str | None] | None = None,
    turn: np.ndarray | None = None,
    parent_row: np.ndarray | None = None,
    prefix_block_ids: Sequence[tuple[int, ...] | None] | None = None,
    model: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """The canonical table from column arrays already in arrival order.

    `parent_row` holds, per row, the row index of its parent in these same arrays, or -1.
    """
    n = len(arrival_s)
    nothing = np.full(n, None, dtype=object)

    def objects(values):
        return nothing if values is None else np.asarray(values, dtype=object).reshape(n)

    return pd.DataFrame(
        {
            "request_id": np.arange(n, dtype=np.int64),
            "arrival_s": np.asarray(arrival_s, dtype=np.float64),
            "prompt_tokens": np.asarray(prompt_tokens, dtype=np.int64),
            "output_tokens": np.asarray(output_tokens, dtype=np.int64),
            "session_id": objects(session_id),
            "turn": _nullable(np.full(n, -1) if turn is None else turn),
            "parent_id": _nullable(np.full(n, -1) if parent_row is None else parent_row),
            "prefix_block_ids": _block_ids(prefix_block_ids, n),
            "model": objects(model),
        }
    )


def _nullable(values) -> pd.api.extensions.ExtensionArray:
    """Int64 with <NA> where the value is negative (our "none" sentinel)."""
    values = np.asarray(values, dtype=np.int64)
    missing = values < 0
    return pd.arrays.IntegerArray(np.where(missing, 0, values), missing)


def _block_ids(prefix_block_ids, n: int) -> np.ndarray:
    column = np.empty(n, dtype=object)  # filled one by one: numpy would turn equal-length tuples into a 2-D array
    if prefix_block_ids is not None:
        for i, ids in enumerate(prefix_block_ids):
            column[i] = ids
    return column


def renumber(requests: pd.DataFrame) -> pd.DataFrame:
    """Sort by arrival (stable), set `request_id` to 0..n-1 and point `parent_id` at the new ids.

    A parent no longer in the table becomes <NA>.
    """
    table = requests.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    old_ids = table["request_id"].to_numpy(dtype=np.int64)
    old_parents = table["parent_id"].fillna(-1).to_numpy(dtype=np.int64)
    table["request_id"] = np.arange(len(table), dtype=np.int64)
    parent_row = pd.Index(old_ids).get_indexer(old_parents)  # -1 where the parent is gone
    table["parent_id"] = _nullable(parent_row)
    return table
