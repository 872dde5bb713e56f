"""Trace files as numbered lines: CSV rows and JSON-lines records, with the row checks every file gets.

Lines are split on LF with a trailing CR removed, so CRLF files and files without a final newline
read the same. Blank lines are not rows. Bytes that are not UTF-8 make their line invalid
(`bad_encoding`) instead of failing the whole file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np

from workloads.errors import TraceFormatError
from workloads.validate import RowChecker

_UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape turns bad bytes into


@dataclass(frozen=True)
class TextLines:
    """The non-blank lines of a file, their 1-based line numbers, and which hold bytes that are not UTF-8."""

    lines: list[str]
    numbers: np.ndarray  # int64, one per line
    undecodable: np.ndarray  # bool, one per line


def read_text(path: str | PathLike) -> tuple[str, bool]:
    """The file's text (a UTF-8 BOM removed) and whether any bytes were not UTF-8 (kept as surrogates)."""
    data = Path(path).read_bytes()
    if not data.strip():
        raise TraceFormatError(path, None, None, data[:20].decode("latin-1"), "a non-empty trace file", "empty_file")
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return data.decode("utf-8-sig", errors="surrogateescape"), True


def read_lines(path: str | PathLike) -> TextLines:
    text, has_bad_bytes = read_text(path)
    numbered = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not numbered:
        raise TraceFormatError(path, None, None, text[:20], "a trace file with a non-blank line", "empty_file")
    lines = [line for _, line in numbered]
    numbers = np.fromiter((number for number, _ in numbered), dtype=np.int64, count=len(numbered))
    undecodable = np.zeros(len(lines), dtype=bool)
    if has_bad_bytes:
        undecodable[:] = [bool(_UNDECODABLE.search(line)) for line in lines]
    return TextLines(lines, numbers, undecodable)


@dataclass(frozen=True)
class CsvRows:
    """A CSV file split into fields (no quoting rules beyond one pair of quotes around a whole field)."""

    path: str
    header: list[str]
    rows: list[list[str]]
    quoted: bool  # some field may be wrapped in double quotes

    def has(self, name: str) -> bool:
        return name in self.header

    def column(self, name: str) -> np.ndarray:
        """The field under `name` in every row ('' where a short row lacks it), as an object array."""
        if name not in self.header:
            raise TraceFormatError(
                self.path, 1, name, ",".join(self.header), f"a header with the column {name!r}", "missing_column"
            )
        at = self.header.index(name)
        clean = unquote if self.quoted else str.strip
        return np.fromiter(
            (clean(row[at]) if len(row) > at else "" for row in self.rows), dtype=object, count=len(self.rows)
        )


def unquote(field: str) -> str:
    """A CSV field without surrounding spaces and one pair of surrounding double quotes."""
    field = field.strip()
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1].strip()
    return field


def read_csv(path: str | PathLike, skip_invalid: bool) -> tuple[CsvRows, RowChecker]:
    """The header and data rows of a CSV, and a checker over the data rows (header = first non-blank line)."""
    text = read_lines(path)
    quoted = any('"' in line for line in text.lines)
    header = [unquote(name) for name in text.lines[0].split(",")]
    body = text.lines[1:]
    rows = [line.split(",") for line in body]
    checker = RowChecker(path, text.numbers[1:], skip_invalid)
    checker.reject(text.undecodable[1:], "bad_encoding", None, body, "UTF-8 text")
    fields = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    checker.reject(
        fields != len(header),
        "wrong_field_count",
        None,
        body,
        f"{len(header)} comma-separated fields, as in the header",
    )
    return CsvRows(str(path), header, rows, quoted), checker


def read_json_lines(
    path: str | PathLike, keys: Sequence[str], required: Sequence[str], skip_invalid: bool
) -> tuple[dict[str, np.ndarray], RowChecker]:
    """One JSON object per line: the values of `keys` (None where absent) and a checker over the lines.

    A required key that no readable line has is a missing column: the whole file is rejected.
    """
    text = read_lines(path)
    checker = RowChecker(path, text.numbers, skip_invalid)
    checker.reject(text.undecodable, "bad_encoding", None, text.lines, "UTF-8 text")
    n = len(text.lines)
    records: list[dict] = []
    bad_json = np.zeros(n, dtype=bool)
    not_object = np.zeros(n, dtype=bool)
    loads = json.loads
    for i, line in enumerate(text.lines):
        try:
            record = loads(line)
        except (ValueError, RecursionError):
            record, bad_json[i] = {}, True
        if type(record) is not dict:
            record, not_object[i] = {}, True
        records.append(record)
    checker.reject(bad_json, "bad_json", None, text.lines, "one JSON object per line")
    checker.reject(not_object, "not_an_object", None, text.lines, "a JSON object {...} per line")
    live = [record for record, alive in zip(records, checker.alive) if alive]
    for key in required:
        if live and not any(key in record for record in live):
            first = int(text.numbers[np.argmax(checker.alive)])
            raise TraceFormatError(
                path, first, key, sorted(live[0]), f"the key {key!r} in every record", "missing_column"
            )
    columns = {key: np.fromiter((record.get(key) for record in records), dtype=object, count=n) for key in keys}
    return columns, checker
