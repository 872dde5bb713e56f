"""The registry of trace formats, format detection, and `read_trace`, the one entry point for files.

Adding a format: a module with `read(path, *, skip_invalid, count_tokens) -> Trace` and a
`SIGNATURE` (column or key names only it has), and one line in `READERS`.
"""

from __future__ import annotations

import json
from os import PathLike
from typing import Callable, NamedTuple

from workloads import fmt_azure, fmt_bailian, fmt_burstgpt, fmt_mooncake, fmt_sharegpt, fmt_vidur
from workloads.errors import TraceFormatError
from workloads.table import Trace
from workloads.textfile import unquote


class Reader(NamedTuple):
    read: Callable[..., Trace]
    signature: frozenset[str]  # any of these names in the header / first record means this format


# Detection tries these in order: Bailian before Mooncake (Bailian records carry Mooncake's keys too).
READERS: dict[str, Reader] = {
    "azure": Reader(fmt_azure.read, fmt_azure.SIGNATURE),
    "burstgpt": Reader(fmt_burstgpt.read, fmt_burstgpt.SIGNATURE),
    "vidur": Reader(fmt_vidur.read, fmt_vidur.SIGNATURE),
    "bailian": Reader(fmt_bailian.read, fmt_bailian.SIGNATURE),
    "mooncake": Reader(fmt_mooncake.read, fmt_mooncake.SIGNATURE),
    "sharegpt": Reader(fmt_sharegpt.read, fmt_sharegpt.SIGNATURE),
}

_HEAD_BYTES = 1 << 16  # enough for a header or a first record; a long first JSON line is parsed partially


def detect_format(path: str | PathLike) -> str:
    """The name in `READERS` of the format of `path`, from its CSV header or its first JSON record."""
    with open(path, "rb") as file:
        head = file.read(_HEAD_BYTES).decode("utf-8-sig", errors="replace")
    first = next((line.strip() for line in head.split("\n") if line.strip()), "")
    if not first:
        raise TraceFormatError(path, None, None, head[:20], "a non-empty trace file", "empty_file")
    if first.startswith("["):
        return "sharegpt"
    names = _json_keys(first) if first.startswith("{") else {unquote(name) for name in first.split(",")}
    for name, reader in READERS.items():
        if names & reader.signature:
            return name
    known = "; ".join(f"{name}: {', '.join(sorted(reader.signature))}" for name, reader in READERS.items())
    raise TraceFormatError(
        path, 1, None, first, f"a CSV header or JSON keys naming one of the formats ({known})", "unknown_format"
    )


def _json_keys(line: str) -> set[str]:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # a damaged or cut first record: take the quoted names followed by ':'
        return {part.rsplit('"', 2)[-2] for part in line.split(":")[:-1] if part.count('"') >= 2}
    return set(record) if isinstance(record, dict) else set()


def read_trace(
    path: str | PathLike,
    format: str | None = None,
    *,
    skip_invalid: bool = False,
    count_tokens: Callable[[str], int] | None = None,
) -> Trace:
    """Read a trace file into the canonical request table (see `workloads.table`).

    `format` names a reader in `READERS`; None detects it from the header or keys. Bad rows raise
    `TraceFormatError` naming file, line, column, value and what was expected; with `skip_invalid`
    they are skipped and counted by reason in `trace.summary`. ShareGPT needs `count_tokens`.
    """
    if format is None:
        format = detect_format(path)
    if format not in READERS:
        raise TraceFormatError(path, None, None, format, f"a format name in {sorted(READERS)}", "unknown_format")
    return READERS[format].read(path, skip_invalid=skip_invalid, count_tokens=count_tokens)
