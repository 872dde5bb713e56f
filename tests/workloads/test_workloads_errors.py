"""Bad input: a TraceFormatError naming file, line, column, value and expectation; or, with
skip_invalid, the row skipped and counted under the same reason."""

from __future__ import annotations

import pytest

from workloads import TraceFormatError, read_trace
from workloads_testdata import AZURE, BAILIAN_ROWS, FIXTURES, MOONCAKE_ROWS, jsonl, words, write

MOONCAKE = jsonl(MOONCAKE_ROWS)
BAILIAN = jsonl(BAILIAN_ROWS)
SHAREGPT = FIXTURES["sharegpt"][1]

# (file, bytes, replace this, with this, reason, line, column, value)
ROW_ERRORS = [
    ("a.csv", AZURE, b",396,", b",3x6,", "not_a_number", 3, "ContextTokens", "3x6"),
    ("a.csv", AZURE, b",396,", b",-396,", "negative_value", 3, "ContextTokens", "-396"),
    ("a.csv", AZURE, b",396,", b",NaN,", "not_a_number", 3, "ContextTokens", "NaN"),
    ("a.csv", AZURE, b",396,", b",39.5,", "not_an_integer", 3, "ContextTokens", "39.5"),
    ("a.csv", AZURE, b",396,", b",,", "missing_value", 3, "ContextTokens", ""),
    ("a.csv", AZURE, b",396,", b",0,", "zero_tokens", 3, "ContextTokens", "0"),
    ("a.csv", AZURE, b",55\r", b",0\r", "zero_tokens", 4, "GeneratedTokens", "0"),
    ("a.csv", AZURE, b",396,109", b",396,109,7", "wrong_field_count", 3, None, "2023-11-16 18:15:50.9951690,396,109,7"),
    ("a.csv", AZURE, b"18:16:00", b"18:61:00", "bad_timestamp", 5, "TIMESTAMP", "2023-11-16 18:61:00.0000000"),
    ("a.csv", AZURE, b"18:16:00", b"18:15:00", "unsorted_timestamp", 5, "TIMESTAMP", "2023-11-16 18:15:00.0000000"),
    ("a.csv", AZURE, b",879,", b",8\xff9,", "bad_encoding", 4, None, "2023-11-16 18:15:50.9951691,8\udcff9,55"),
    ("m.jsonl", MOONCAKE, b'"output_length": 5,', b'"output_length": 5', "bad_json", 2, None, None),
    ("m.jsonl", MOONCAKE, b'{"timestamp": 1500', b'[{"timestamp": 1500', "bad_json", 3, None, None),
    ("m.jsonl", MOONCAKE, b"[0, 2]", b"[0]", "hash_ids_length", 2, "hash_ids", 1),
    ("m.jsonl", MOONCAKE, b"[0, 2]", b'[0, "2"]', "bad_hash_ids", 2, "hash_ids", [0, "2"]),
    ("m.jsonl", MOONCAKE, b'"output_length": 5,', b'"output_length": true,', "not_a_number", 2, "output_length", True),
    ("m.jsonl", MOONCAKE, b'"output_length": 5,', b'"output_length": null,', "missing_value", 2, "output_length", None),
    ("m.jsonl", MOONCAKE, b'"timestamp": 2001', b'"timestamp": 1499', "unsorted_timestamp", 4, "timestamp", 1499),
    ("m.jsonl", MOONCAKE, b'"timestamp": 2001', b'"timestamp": -1', "negative_value", 4, "timestamp", -1),
    ("q.jsonl", BAILIAN, b'"chat_id": 11', b'"chat_id": 10', "duplicate_id", 2, "chat_id", "10"),
    ("q.jsonl", BAILIAN, b'"turn": 3', b'"turn": 2.5', "not_an_integer", 4, "turn", 2.5),
    ("s.json", SHAREGPT, b'"four five"', b'""', "zero_tokens", 2, "conversations", 0),
]
ROW_ERROR_IDS = [f"{case[0]}-{case[4]}-{i}" for i, case in enumerate(ROW_ERRORS)]


@pytest.mark.parametrize(
    ("name", "data", "old", "new", "reason", "line", "column", "value"), ROW_ERRORS, ids=ROW_ERROR_IDS
)
def test_a_bad_row_is_an_error_naming_where_and_what(tmp_path, name, data, old, new, reason, line, column, value):
    assert old in data
    path = write(tmp_path, name, data.replace(old, new, 1))
    with pytest.raises(TraceFormatError) as raised:
        read_trace(path, count_tokens=words)
    error = raised.value
    assert (error.path, error.line, error.column, error.reason) == (str(path), line, column, reason)
    if value is not None:
        assert error.value == value
    assert str(error).startswith(f"{path}:{line}: ") and "expected" in str(error) and "\n" not in str(error)


@pytest.mark.parametrize(
    ("name", "data", "old", "new", "reason", "line", "column", "value"), ROW_ERRORS, ids=ROW_ERROR_IDS
)
def test_with_skip_invalid_the_bad_row_is_counted_by_reason(
    tmp_path, name, data, old, new, reason, line, column, value
):
    path = write(tmp_path, name, data.replace(old, new, 1))
    clean = read_trace(write(tmp_path, "clean_" + name, data), count_tokens=words)
    trace = read_trace(path, skip_invalid=True, count_tokens=words)
    summary = trace.summary
    assert summary.skipped[reason] == 1
    assert summary.rows_read == clean.summary.rows_read
    assert summary.rows_kept == clean.summary.rows_kept - 1 == len(trace)
    assert summary.rows_read == summary.rows_kept + summary.rows_skipped
    assert f":{line}:" in summary.examples[reason]


def test_a_malformed_sharegpt_conversation_is_one_bad_row(tmp_path):
    path = write(tmp_path, "s.json", SHAREGPT.replace(b'"yes"', b"6"))  # conversation b, from line 27
    with pytest.raises(TraceFormatError) as raised:
        read_trace(path, count_tokens=words)
    error = raised.value
    assert (error.line, error.column, error.reason, error.value) == (
        27,
        "conversations",
        "bad_conversation",
        {"from": "chatgpt", "value": 6},
    )
    trace = read_trace(path, skip_invalid=True, count_tokens=words)
    assert dict(trace.summary.skipped) == {"bad_conversation": 1, "no_reply": 1}
    assert trace.requests["session_id"].tolist() == ["a", "a"]


def test_the_earliest_bad_line_is_reported_when_several_are_bad(tmp_path):
    data = AZURE.replace(b",55\r", b",0\r").replace(
        b",396,", b",x,"
    )  # line 4 checked first by column, line 3 is earlier
    with pytest.raises(TraceFormatError) as raised:
        read_trace(write(tmp_path, "a.csv", data))
    assert (raised.value.line, raised.value.reason) == (3, "not_a_number")
    trace = read_trace(write(tmp_path, "a.csv", data), skip_invalid=True)
    assert dict(trace.summary.skipped) == {"not_a_number": 1, "zero_tokens": 1}
    assert trace.requests["prompt_tokens"].tolist() == [374, 91]


FILE_ERRORS = [
    ("empty.csv", b"", "empty_file", None),
    ("blank.jsonl", b"\r\n   \n\t\n", "empty_file", None),
    ("header.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n", "no_rows", None),
    ("unknown.csv", b"when,prompt,reply\n1,2,3\n", "unknown_format", 1),
    ("column.csv", AZURE.replace(b"GeneratedTokens", b"Generated"), "missing_column", 1),
    ("key.jsonl", MOONCAKE.replace(b'"hash_ids"', b'"ids"'), "missing_column", 1),
    ("array.json", SHAREGPT[:-40], "bad_json", None),
    ("empty_array.json", b"[ ]", "no_rows", None),
]


@pytest.mark.parametrize("skip_invalid", [False, True])
@pytest.mark.parametrize(("name", "data", "reason", "line"), FILE_ERRORS, ids=[case[0] for case in FILE_ERRORS])
def test_a_bad_file_is_an_error_even_with_skip_invalid(tmp_path, name, data, reason, line, skip_invalid):
    path = write(tmp_path, name, data)
    with pytest.raises(TraceFormatError) as raised:
        read_trace(path, skip_invalid=skip_invalid, count_tokens=words)
    assert raised.value.reason == reason and raised.value.path == str(path)
    if line is not None:
        assert raised.value.line == line


def test_all_rows_bad_with_skip_invalid_gives_an_empty_table_and_the_counts(tmp_path):
    data = (
        AZURE.replace(b",374,", b",-1,").replace(b",396,", b",-1,").replace(b",879,", b",-1,").replace(b",91,", b",x,")
    )
    trace = read_trace(write(tmp_path, "a.csv", data), skip_invalid=True)
    assert len(trace) == 0 and list(trace.requests.columns)[0] == "request_id"
    assert dict(trace.summary.skipped) == {"negative_value": 3, "not_a_number": 1}
    assert str(trace.summary) == "4 rows read, 0 kept, skipped: negative_value 3, not_a_number 1"


def test_error_survives_pickling():
    import pickle

    error = TraceFormatError("t.csv", 7, "ContextTokens", "x", "a whole number of tokens", "not_a_number")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.line, copy.column, copy.reason, str(copy)) == (7, "ContextTokens", "not_a_number", str(error))
    assert str(error) == "t.csv:7: column 'ContextTokens': got 'x', expected a whole number of tokens"
