"""The one error a trace reader raises for bad input: where it is, what was found, what was expected."""

from __future__ import annotations

from os import PathLike

_VALUE_CHARS = 80  # a corrupted line can be megabytes long; the message stays one readable line


class TraceFormatError(ValueError):
    """A trace file, or one row of it, that cannot be read as a request table.

    `line` is the 1-based line of the file (the header is line 1 of a CSV), or None where the
    problem is the whole file; `column` is the CSV column or JSON key, or None; `reason` is the
    short name the row is counted under when rows are skipped (`skip_invalid=True`).
    """

    def __init__(
        self,
        path: str | PathLike,
        line: int | None,
        column: str | None,
        value: object,
        expected: str,
        reason: str = "invalid",
    ):
        self.path = str(path)
        self.line = line
        self.column = column
        self.value = value
        self.expected = expected
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.column is not None:
            where += f": column {self.column!r}"
        shown = repr(self.value)
        if len(shown) > _VALUE_CHARS:
            shown = shown[: _VALUE_CHARS - 3] + "..."
        return f"{where}: got {shown}, expected {self.expected}"

    def __reduce__(self):  # keep the fields through pickling (Ray workers)
        return (
            type(self),
            (self.path, self.line, self.column, self.value, self.expected, self.reason),
        )
