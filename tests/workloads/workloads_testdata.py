"""Small trace files of every format, written by the tests, and the path to ../shared/traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"  # tests/workloads -> repo -> ..


def shared_trace(name: str) -> Path:
    """A real trace under ../shared/traces, or skip the test saying where it was looked for."""
    path = SHARED_TRACES / name
    if not path.is_file():
        pytest.skip(f"real trace {path} is not present (the tests look for ../shared beside the repo)")
    return path


def words(text: str) -> int:
    """A stand-in tokenizer for ShareGPT tests: one token per whitespace-separated word."""
    return len(text.split())


# Exact bytes of each fixture: the oddities each format is known for are in them.
AZURE = (
    b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
    b"2023-11-16 18:15:46.6805900,374,44\r\n"
    b"2023-11-16 18:15:50.9951690,396,109\r\n"
    b"2023-11-16 18:15:50.9951691,879,55\r\n"
    b"2023-11-16 18:16:00.0000000,91,16"  # CRLF, no final newline
)
VIDUR = (  # an unnamed index column and an extra one, as Vidur's processed traces have
    b",arrived_at,num_prefill_tokens,num_decode_tokens,pd_ratio\n"
    b"0,0.0,120,30,4.0\n"
    b"1,0.25,64,8,8.0\n"
    b"2,1.5,2048,256,8.0\n"
)
BURSTGPT = (
    b"Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    b"5,s1,2.5,ChatGPT,472,18,490,Conversation log\n"
    b"45,s1,1.0,ChatGPT,1087,0,1087,Conversation log\n"  # failed request
    b"118,s2,3.0,GPT-4,417,276,693,API log\n"
    b"124,,0.5,ChatGPT,0,0,0,API log\n"  # failed request
    b"130,s3,1.5,ChatGPT,50,25,75,API log\n"
)
MOONCAKE_ROWS = [
    {"timestamp": 0, "input_length": 1000, "output_length": 50, "hash_ids": [0, 1]},
    {"timestamp": 0, "input_length": 1024, "output_length": 5, "hash_ids": [0, 2]},
    {"timestamp": 1500, "input_length": 513, "output_length": 7, "hash_ids": [0, 3]},
    {"timestamp": 2001, "input_length": 100, "output_length": 1, "hash_ids": [4]},
]
BAILIAN_ROWS = [
    {
        "chat_id": 10,
        "parent_chat_id": -1,
        "timestamp": 0.5,
        "input_length": 40,
        "output_length": 9,
        "type": "text",
        "turn": 1,
        "hash_ids": [1, 2, 3],
    },
    {
        "chat_id": 11,
        "parent_chat_id": -1,
        "timestamp": 1.0,
        "input_length": 16,
        "output_length": 3,
        "type": "text",
        "turn": 1,
        "hash_ids": [7],
    },
    {
        "chat_id": 12,
        "parent_chat_id": 10,
        "timestamp": 2.25,
        "input_length": 70,
        "output_length": 4,
        "type": "text",
        "turn": 2,
        "hash_ids": [1, 2, 3, 4, 5],
    },
    {
        "chat_id": 13,
        "parent_chat_id": 12,
        "timestamp": 3.0,
        "input_length": 90,
        "output_length": 6,
        "type": "image",
        "turn": 3,
        "hash_ids": [1, 2, 3, 4, 5, 6],
    },
    {
        "chat_id": 14,
        "parent_chat_id": 99,
        "timestamp": 4.0,
        "input_length": 20,
        "output_length": 2,
        "type": "text",
        "turn": 2,
        "hash_ids": [8, 9],
    },
]
SHAREGPT = [
    {
        "id": "a",
        "conversations": [
            {"from": "system", "value": "be brief"},
            {"from": "human", "value": "one two three"},
            {"from": "gpt", "value": "four five"},
            {"from": "human", "value": "six"},
            {"from": "gpt", "value": "seven eight nine ten"},
        ],
    },
    {
        "id": "b",
        "conversations": [
            {"from": "gpt", "value": "hello there"},
            {"from": "human", "value": "hi"},
            {"from": "human", "value": "again you"},
            {"from": "chatgpt", "value": "yes"},
            {"from": "human", "value": "unanswered"},
        ],
    },
    {"id": "c", "conversations": []},
]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


FIXTURES = {  # format -> (file name, bytes, rows read, rows kept)
    "azure": ("azure.csv", AZURE, 4, 4),
    "vidur": ("vidur.csv", VIDUR, 3, 3),
    "burstgpt": ("burstgpt.csv", BURSTGPT, 5, 3),
    "mooncake": ("mooncake.jsonl", jsonl(MOONCAKE_ROWS), 4, 4),
    "bailian": ("bailian.jsonl", jsonl(BAILIAN_ROWS), 5, 5),
    "sharegpt": ("sharegpt.json", json.dumps(SHAREGPT, indent=1).encode(), 5, 3),
}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path
