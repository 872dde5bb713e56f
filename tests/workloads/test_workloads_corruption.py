"""Valid files corrupted at random: TraceFormatError is the only exception, and with skip_invalid
every row read is either kept or counted, and agrees with the strict read."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workloads import TraceFormatError, read_trace
from workloads_testdata import FIXTURES, words

LINE_FORMATS = {"azure": "csv", "vidur": "csv", "burstgpt": "csv", "mooncake": "jsonl", "bailian": "jsonl"}


def drop_column(fmt: str, data: bytes, which: int) -> bytes:
    """The file without one of its columns (CSV) or keys (JSON), in every row."""
    if LINE_FORMATS.get(fmt) == "csv":
        lines = data.split(b"\n")
        width = len(lines[0].split(b","))
        return b"\n".join(b",".join(f for i, f in enumerate(line.split(b",")) if i != which % width) for line in lines)
    if fmt == "sharegpt":
        conversations = json.loads(data)
        key = ["id", "conversations"][which % 2]
        return json.dumps([{k: v for k, v in c.items() if k != key} for c in conversations]).encode()
    rows = [json.loads(line) for line in data.splitlines()]
    key = sorted(rows[0])[which % len(rows[0])]
    return b"".join(json.dumps({k: v for k, v in row.items() if k != key}).encode() + b"\n" for row in rows)


def corrupt(data: bytes, op: tuple) -> bytes:
    kind = op[0]
    if kind == "truncate":
        return data[: int(len(data) * op[1])]
    if kind == "flip":
        at = int(len(data) * op[1]) % max(len(data), 1)
        return data[:at] + bytes([op[2]]) + data[at + 1 :] if data else data
    lines = data.split(b"\n")
    i, j = (int(len(lines) * f) % len(lines) for f in op[1:3])
    if kind == "swap":
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(j, lines[i])
    return b"\n".join(lines)


fraction = st.floats(0, 1, exclude_max=True)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("truncate"), fraction),
        st.tuples(st.just("flip"), fraction, st.integers(0, 255)),
        st.tuples(st.sampled_from(["swap", "delete", "duplicate"]), fraction, fraction),
    ),
    min_size=1,
    max_size=3,
)


def non_blank_lines(data: bytes) -> int:
    text = data.decode("utf-8-sig", errors="surrogateescape")
    return sum(1 for line in text.split("\n") if line.strip())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(sorted(FIXTURES)),
    dropped=st.one_of(st.none(), st.integers(0, 7)),
    ops=operations,
)
def test_corrupted_files_raise_only_trace_format_errors_and_counts_add_up(tmp_path, fmt, dropped, ops):
    name, data, _, _ = FIXTURES[fmt]
    if dropped is not None:
        data = drop_column(fmt, data, dropped)
    for op in ops:
        data = corrupt(data, op)
    path = tmp_path / name
    path.write_bytes(data)

    try:
        strict = read_trace(path, count_tokens=words)
    except TraceFormatError as error:
        strict = error
    try:
        lenient = read_trace(path, skip_invalid=True, count_tokens=words)
    except TraceFormatError as error:  # a whole-file problem: the strict read met the same one
        assert isinstance(strict, TraceFormatError) and str(strict) == str(error)
        return

    summary = lenient.summary
    assert summary.rows_read == summary.rows_kept + summary.rows_skipped == len(lenient) + summary.rows_skipped
    if LINE_FORMATS.get(lenient.format) == "csv":
        assert summary.rows_read == non_blank_lines(data) - 1  # every line after the header is a row
    elif LINE_FORMATS.get(lenient.format) == "jsonl":
        assert summary.rows_read == non_blank_lines(data)
    requests = lenient.requests
    assert requests["request_id"].tolist() == list(range(len(requests)))
    assert (requests["prompt_tokens"] >= 1).all() and (requests["output_tokens"] >= 1).all()
    assert np.all(np.diff(requests["arrival_s"].to_numpy()) >= 0)
    if len(requests):
        assert requests["arrival_s"].iloc[0] == 0.0
    if isinstance(strict, TraceFormatError):
        assert summary.skipped.get(strict.reason, 0) >= 1, (str(strict), summary)
    else:
        pd.testing.assert_frame_equal(strict.requests, requests)
        assert strict.summary == summary
