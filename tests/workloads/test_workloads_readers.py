"""Each trace format read from a small fixture: detection, the canonical table, the format's oddities."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workloads import COLUMNS, READERS, TraceFormatError, detect_format, read_trace
from workloads_testdata import AZURE, BURSTGPT, FIXTURES, MOONCAKE_ROWS, SHAREGPT, jsonl, words, write


@pytest.mark.parametrize("fmt", sorted(FIXTURES))
def test_every_format_is_detected_and_reads_into_the_canonical_table(tmp_path, fmt):
    name, data, rows_read, rows_kept = FIXTURES[fmt]
    path = write(tmp_path, name, data)
    assert detect_format(path) == fmt
    trace = read_trace(path, count_tokens=words)
    explicit = read_trace(path, fmt, count_tokens=words)
    pd.testing.assert_frame_equal(trace.requests, explicit.requests)
    requests = trace.requests
    assert tuple(requests.columns) == COLUMNS
    assert (trace.format, trace.source) == (fmt, str(path))
    assert (trace.summary.rows_read, trace.summary.rows_kept, len(trace)) == (rows_read, rows_kept, rows_kept)
    assert requests["request_id"].tolist() == list(range(rows_kept))
    assert requests["arrival_s"].iloc[0] == 0.0 and requests["arrival_s"].is_monotonic_increasing
    assert (requests["prompt_tokens"] >= 1).all() and (requests["output_tokens"] >= 1).all()
    assert str(requests["turn"].dtype) == "Int64" and str(requests["parent_id"].dtype) == "Int64"


def test_registry_names_every_format():
    assert sorted(READERS) == ["azure", "bailian", "burstgpt", "mooncake", "sharegpt", "vidur"]


def test_azure_keeps_100ns_ticks_and_reads_crlf_like_lf(tmp_path):
    trace = read_trace(write(tmp_path, "a.csv", AZURE))
    arrival = trace.requests["arrival_s"].to_numpy()
    assert arrival.tolist() == [0.0, 4.314579, 4.3145791, 13.31941]
    assert arrival[2] - arrival[1] == pytest.approx(1e-7, abs=1e-12)
    assert trace.requests["prompt_tokens"].tolist() == [374, 396, 879, 91]
    assert trace.requests["output_tokens"].tolist() == [44, 109, 55, 16]
    unix = AZURE.replace(b"\r\n", b"\n") + b"\n"
    pd.testing.assert_frame_equal(read_trace(write(tmp_path, "b.csv", unix)).requests, trace.requests)
    with_bom = b"\xef\xbb\xbf" + AZURE
    pd.testing.assert_frame_equal(read_trace(write(tmp_path, "c.csv", with_bom)).requests, trace.requests)


def test_azure_2024_utc_offsets_are_honoured(tmp_path):
    data = (
        b"TIMESTAMP,ContextTokens,GeneratedTokens\n"
        b"2024-05-10 00:00:00.0042300+00:00,10,2\n"
        b"2024-05-10 02:00:01.5042300+02:00,20,3\n"  # 00:00:01.50423 UTC
    )
    trace = read_trace(write(tmp_path, "a.csv", data))
    assert trace.requests["arrival_s"].tolist() == [0.0, 1.5]


def test_vidur_ignores_extra_columns(tmp_path):
    trace = read_trace(write(tmp_path, "v.csv", FIXTURES["vidur"][1]))
    assert trace.requests["arrival_s"].tolist() == [0.0, 0.25, 1.5]
    assert trace.requests["prompt_tokens"].tolist() == [120, 64, 2048]
    assert trace.requests["output_tokens"].tolist() == [30, 8, 256]


def test_burstgpt_failed_requests_are_skipped_and_counted_without_skip_invalid(tmp_path):
    trace = read_trace(write(tmp_path, "b.csv", BURSTGPT))
    assert dict(trace.summary.skipped) == {"failed_request": 2}
    assert "b.csv:3" in trace.summary.examples["failed_request"]  # the first failed row, line 3
    requests = trace.requests
    assert requests["arrival_s"].tolist() == [0.0, 113.0, 125.0]
    assert requests["model"].tolist() == ["ChatGPT", "GPT-4", "ChatGPT"]
    assert requests["session_id"].tolist() == ["s1", "s2", "s3"]
    assert requests["prompt_tokens"].tolist() == [472, 417, 50]


def test_burstgpt_without_session_column_and_with_quoted_fields(tmp_path):
    data = (
        b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
        b'1,"GPT-4",10,5,15,"API log"\n'
        b'3,ChatGPT,"7",2,9,API log\n'
    )
    trace = read_trace(write(tmp_path, "b.csv", data))
    assert trace.requests["model"].tolist() == ["GPT-4", "ChatGPT"]
    assert trace.requests["session_id"].tolist() == [None, None]
    assert trace.requests["prompt_tokens"].tolist() == [10, 7]


def test_mooncake_block_ids_become_tuples_with_block_size_512(tmp_path):
    trace = read_trace(write(tmp_path, "m.jsonl", jsonl(MOONCAKE_ROWS)))
    assert trace.prefix_block_size == 512
    assert trace.requests["prefix_block_ids"].tolist() == [(0, 1), (0, 2), (0, 3), (4,)]
    assert trace.requests["arrival_s"].tolist() == [0.0, 0.0, 1.5, 2.001]


def test_bailian_links_turns_into_sessions(tmp_path):
    trace = read_trace(write(tmp_path, "q.jsonl", FIXTURES["bailian"][1]))
    requests = trace.requests
    assert trace.prefix_block_size == 16
    assert requests["arrival_s"].tolist() == [0.0, 0.5, 1.75, 2.5, 3.5]
    assert requests["parent_id"].tolist() == [pd.NA, pd.NA, 0, 2, pd.NA]  # chat 14's parent 99 is not in the file
    assert requests["session_id"].tolist() == ["10", "11", "10", "10", "14"]
    assert requests["turn"].tolist() == [1, 1, 2, 3, 2]
    assert requests["prefix_block_ids"].iloc[3] == (1, 2, 3, 4, 5, 6)


def test_sharegpt_turns_carry_the_whole_conversation_as_prompt(tmp_path):
    trace = read_trace(write(tmp_path, "s.json", FIXTURES["sharegpt"][1]), count_tokens=words)
    requests = trace.requests
    # a: system 2 + user 3 -> reply 2; then 2+3+2 + user 1 -> reply 4.  b: assistant opener 2 is context,
    # two user messages (1 + 2) join, reply 1; its last user message has no reply.  c: empty.
    assert requests["prompt_tokens"].tolist() == [5, 8, 5]
    assert requests["output_tokens"].tolist() == [2, 4, 1]
    assert requests["session_id"].tolist() == ["a", "a", "b"]
    assert requests["turn"].tolist() == [1, 2, 1]
    assert requests["parent_id"].tolist() == [pd.NA, 0, pd.NA]
    assert requests["arrival_s"].tolist() == [0.0, 0.0, 0.0]
    assert dict(trace.summary.skipped) == {"no_reply": 2}
    as_lines = read_trace(write(tmp_path, "s.jsonl", jsonl(SHAREGPT)), count_tokens=words)
    pd.testing.assert_frame_equal(as_lines.requests, requests)


def test_sharegpt_without_a_tokenizer_says_so(tmp_path):
    path = write(tmp_path, "s.json", json.dumps(SHAREGPT).encode())
    with pytest.raises(TraceFormatError, match="count_tokens") as error:
        read_trace(path)
    assert error.value.reason == "no_tokenizer"


def test_named_format_that_does_not_match_is_an_error(tmp_path):
    path = write(tmp_path, "m.jsonl", jsonl(MOONCAKE_ROWS))
    with pytest.raises(TraceFormatError) as error:
        read_trace(path, "azure")
    assert (error.value.line, error.value.column, error.value.reason) == (1, "TIMESTAMP", "missing_column")
    with pytest.raises(TraceFormatError, match="a format name in") as error:
        read_trace(path, "parquet")
    assert error.value.reason == "unknown_format"


def test_dataframe_dtypes_are_canonical(tmp_path):
    trace = read_trace(write(tmp_path, "m.jsonl", jsonl(MOONCAKE_ROWS)))
    dtypes = {name: str(dtype) for name, dtype in trace.requests.dtypes.items()}
    assert dtypes == {
        "request_id": "int64",
        "arrival_s": "float64",
        "prompt_tokens": "int64",
        "output_tokens": "int64",
        "session_id": "object",
        "turn": "Int64",
        "parent_id": "Int64",
        "prefix_block_ids": "object",
        "model": "object",
    }
    assert np.all(trace.requests["session_id"].isna())
