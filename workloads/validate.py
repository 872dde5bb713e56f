"""Row validation shared by the readers: every bad row raises, or is skipped and counted by reason.

A reader turns its file into raw column arrays (one entry per data row, in file order) and the
1-based file line of each row, then asks a `RowChecker` to parse and check each column. A row
that fails a check is dead from then on; the first failure is the reason it is counted under.
In strict mode `finish()` raises the failure on the earliest line; with `skip_invalid` dead rows
are dropped and counted. `drop()` skips rows the format itself marks as unusable (BurstGPT's
failed requests) in both modes.
"""

from __future__ import annotations

from collections import Counter
from os import PathLike
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from workloads.errors import TraceFormatError
from workloads.table import Trace, TraceSummary, make_table

MAX_TOKENS = 2**31 - 1  # beyond any context length; larger values are corruption, not requests

_INT = frozenset({int})
Expected = str | Callable[[int], str]  # text, or text for row i (values may be a callable of i too)


class RowChecker:
    """Per-row checks over raw column arrays; see the module docstring."""

    def __init__(self, path: str | PathLike, line_numbers: Sequence[int], skip_invalid: bool):
        self.path = str(path)
        self.lines = np.asarray(line_numbers, dtype=np.int64)
        self.skip_invalid = skip_invalid
        self.alive = np.ones(len(self.lines), dtype=bool)
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self._earliest: TraceFormatError | None = None

    def __len__(self) -> int:
        return len(self.lines)

    def reject(self, bad, reason: str, column: str | None, values, expected: Expected) -> None:
        """Rows where `bad` is true are invalid: an error in strict mode, skipped with `skip_invalid`."""
        self._kill(bad, reason, column, values, expected, is_error=True)

    def drop(self, bad, reason: str, column: str | None, values, expected: Expected) -> None:
        """Rows the format itself marks as unusable: skipped and counted in both modes."""
        self._kill(bad, reason, column, values, expected, is_error=False)

    def _kill(self, bad, reason, column, values, expected, is_error: bool) -> None:
        rows = np.flatnonzero(np.asarray(bad, dtype=bool) & self.alive)
        if len(rows) == 0:
            return
        self.alive[rows] = False
        self.skipped[reason] += len(rows)
        first = int(rows[0])
        value = values(first) if callable(values) else values[first]
        error = TraceFormatError(
            self.path,
            int(self.lines[first]),
            column,
            value.item() if isinstance(value, np.generic) else value,
            expected(first) if callable(expected) else expected,
            reason,
        )
        self.examples.setdefault(reason, str(error))
        if is_error and not self.skip_invalid and (self._earliest is None or error.line < self._earliest.line):
            self._earliest = error

    def integers(self, raw, column: str, *, zero_ok: bool = False) -> np.ndarray:
        """Token counts (or turn numbers): whole numbers in [0 or 1, MAX_TOKENS]. int64, 0 on dead rows."""
        values = self._numbers(raw, column, "a whole number of tokens")
        whole = np.isfinite(values) & (values == np.floor(values))
        self.reject(~whole, "not_an_integer", column, raw, "a whole number of tokens")
        self.reject(values < 0, "negative_value", column, raw, "a count >= 0")
        self.reject(values > MAX_TOKENS, "out_of_range", column, raw, f"a count <= {MAX_TOKENS}")
        if not zero_ok:
            self.reject(values == 0, "zero_tokens", column, raw, "at least 1 token (an empty request cannot be served)")
        return np.where(self.alive & whole & (values <= MAX_TOKENS), values, 0).astype(np.int64)

    def times(self, raw, column: str) -> np.ndarray:
        """Relative timestamps: finite numbers >= 0 (float64, in the file's unit)."""
        values = self._numbers(raw, column, "a timestamp (a number)")
        self.reject(~np.isfinite(values), "not_a_number", column, raw, "a finite timestamp")
        self.reject(values < 0, "negative_value", column, raw, "a timestamp >= 0")
        return values

    def _numbers(self, raw, column: str, expected: str) -> np.ndarray:
        missing, numbers = _parse_numbers(raw)
        self.reject(missing, "missing_value", column, raw, expected)
        self.reject(np.isnan(numbers), "not_a_number", column, raw, expected)
        return numbers

    def strings(self, raw, column: str) -> np.ndarray:
        """Optional labels (model, session): str, or None where empty. Numbers become their text."""
        labels = np.empty(len(raw), dtype=object)
        bad = np.zeros(len(raw), dtype=bool)
        for i, value in enumerate(raw):
            if value is None or value == "":
                labels[i] = None
            elif type(value) in (str, int, float):
                labels[i] = str(value)
            else:
                bad[i] = True
        self.reject(bad, "not_a_string", column, raw, "a text label or nothing")
        return labels

    def block_ids(self, raw, column: str, prompt_tokens: np.ndarray, block_size: int, exact: bool) -> np.ndarray:
        """Prefix block ids: a list of ints per row, as tuples (None on dead rows).

        With `exact`, the format promises one id per `block_size` tokens of the prompt, the last
        block partial: len(ids) == ceil(prompt_tokens / block_size).
        """
        ids = np.full(len(raw), None, dtype=object)
        counts = np.zeros(len(raw), dtype=np.int64)
        bad = np.zeros(len(raw), dtype=bool)
        for i, value in enumerate(raw):
            if type(value) is list and set(map(type, value)) <= _INT:  # exact type: bool is not an id
                ids[i] = tuple(value)
                counts[i] = len(value)
            else:
                bad[i] = True
        self.reject(bad, "bad_hash_ids", column, raw, "a list of integer block ids")
        if exact:
            blocks = -(-prompt_tokens // block_size)
            self.reject(
                counts != blocks,
                "hash_ids_length",
                column,
                counts,
                lambda i: f"{blocks[i]} ids, one per {block_size} tokens of a {prompt_tokens[i]}-token prompt",
            )
        return ids

    def unique(self, keys, column: str) -> None:
        """Request ids must not repeat among the live rows (a parent must be one request)."""
        live = pd.Series(keys, dtype=object)[self.alive]
        repeated = np.zeros(len(self), dtype=bool)
        repeated[live.index[live.duplicated()]] = True
        self.reject(repeated, "duplicate_id", column, keys, "an id no earlier row has")

    def ascending(self, times: np.ndarray, column: str, raw) -> None:
        """Timestamps must not go back: a row earlier than a live row above it is out of order."""
        live = np.flatnonzero(self.alive)
        t = times[live]
        back = np.zeros(len(self), dtype=bool)
        back[live[1:]] = t[1:] < np.maximum.accumulate(t)[:-1]

        def expected(row: int) -> str:
            above = live[live < row]
            latest = above[np.argmax(times[above])]
            return f"timestamps in ascending order (line {self.lines[latest]} has {raw[latest]!r})"

        self.reject(back, "unsorted_timestamp", column, raw, expected)

    def finish(self) -> TraceSummary:
        """Raise the earliest error (strict mode), else the summary of what was kept and skipped."""
        if self._earliest is not None:
            raise self._earliest
        return TraceSummary(len(self), int(self.alive.sum()), dict(self.skipped), dict(self.examples))


def _parse_numbers(raw) -> tuple[np.ndarray, np.ndarray]:
    """(missing, float64 values) from CSV text or JSON values; NaN where not a number.

    JSON true/false are not numbers; strings holding numbers are accepted in both kinds.
    """
    series = pd.Series(raw, dtype=object)
    n = len(series)
    missing = np.fromiter((v is None or v == "" for v in raw), dtype=bool, count=n)
    booleans = np.fromiter((type(v) is bool for v in raw), dtype=bool, count=n)
    try:
        numbers = pd.to_numeric(series.where(~(missing | booleans)), errors="coerce").to_numpy(
            dtype=np.float64, copy=True
        )
    except (TypeError, ValueError, OverflowError):  # exotic values: fall back to one at a time
        numbers = np.fromiter((_one_number(v) for v in raw), dtype=np.float64, count=n)
    numbers[missing | booleans] = np.nan
    return missing, numbers


def _one_number(value) -> float:
    if type(value) is bool:
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return np.nan


def build_trace(
    checker: RowChecker,
    *,
    format: str,
    times: np.ndarray,
    time_column: str,
    raw_times,
    units_per_second: float,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    session_id=None,
    turn=None,
    keys=None,
    parent_keys=None,
    prefix_block_ids=None,
    prefix_block_size: int | None = None,
    model=None,
) -> Trace:
    """Check timestamp order, raise or count the bad rows, and assemble the kept rows as a `Trace`.

    `times` are in the file's unit (int64 ns, or float ms / s); arrival_s = (t - first) / units_per_second.
    `keys` / `parent_keys` (the source's own request ids) become `parent_id` row links.
    """
    if len(checker) == 0:
        raise TraceFormatError(checker.path, None, None, "", "at least one request row", "no_rows")
    checker.ascending(times, time_column, raw_times)
    summary = checker.finish()
    keep = checker.alive
    t = times[keep]
    arrival_s = (t - t[0]) / units_per_second if len(t) else t.astype(np.float64)

    def kept(values):
        return None if values is None else np.asarray(values, dtype=object)[keep]

    parent_row = None
    if keys is not None:
        parent_row = pd.Index(kept(keys)).get_indexer(kept(parent_keys))
    requests = make_table(
        arrival_s,
        prompt_tokens[keep],
        output_tokens[keep],
        session_id=kept(session_id),
        turn=None if turn is None else np.asarray(turn)[keep],
        parent_row=parent_row,
        prefix_block_ids=kept(prefix_block_ids),
        model=kept(model),
    )
    return Trace(requests, summary, prefix_block_size, checker.path, format)
