"""Prompt token ids cut from a corpus: equal prefix block ids give equal tokens, other prompts differ."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import SessionScript, Turn, materialize_prompts, materialize_session, read_trace
from workloads_testdata import AZURE, MOONCAKE_ROWS, jsonl, write

CORPUS = np.random.default_rng(123).integers(0, 50_000, 20_000).astype(np.int32)  # distinct stretches, as real text


def test_prompts_have_their_lengths_and_a_block_is_shared_exactly_when_its_id_is(tmp_path):
    rows = MOONCAKE_ROWS + [{"timestamp": 3000, "input_length": 1536, "output_length": 1, "hash_ids": [0, 2, 9]}]
    trace = read_trace(write(tmp_path, "m.jsonl", jsonl(rows)))  # ids (0,1) (0,2) (0,3) (4,) (0,2,9)
    prompts = materialize_prompts(trace, CORPUS, np.random.default_rng(0))
    assert [len(p) for p in prompts] == [1000, 1024, 513, 100, 1536]
    assert all(p.dtype == np.int32 for p in prompts)
    ids = trace.requests["prefix_block_ids"].tolist()
    compared = 0
    for i in range(len(prompts)):
        for j in range(i + 1, len(prompts)):
            full_blocks = min(len(prompts[i]), len(prompts[j])) // 512
            for b in range(full_blocks):
                same_tokens = np.array_equal(prompts[i][512 * b : 512 * (b + 1)], prompts[j][512 * b : 512 * (b + 1)])
                assert same_tokens == (ids[i][b] == ids[j][b]), (i, j, b)
                compared += 1
    assert compared == 7  # full blocks both prompts have: one per pair, two for (1024, 1536)


def test_a_partial_block_is_the_start_of_the_same_full_block(tmp_path):
    rows = [
        {"timestamp": 0, "input_length": 1024, "output_length": 1, "hash_ids": [7, 8]},
        {"timestamp": 1, "input_length": 600, "output_length": 1, "hash_ids": [7, 8]},
    ]
    prompts = materialize_prompts(read_trace(write(tmp_path, "m.jsonl", jsonl(rows))), CORPUS, 0)
    assert np.array_equal(prompts[1], prompts[0][:600])


def test_materialization_repeats_with_its_seed_and_needs_a_token_corpus(tmp_path):
    trace = read_trace(write(tmp_path, "a.csv", AZURE))
    one = materialize_prompts(trace, CORPUS, 5)
    two = materialize_prompts(trace, CORPUS, np.random.default_rng(5))
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    assert [len(p) for p in one] == [374, 396, 879, 91]
    assert not np.array_equal(one[0][:300], one[1][:300])  # no prefix ids: unrelated prompts
    short = materialize_prompts(trace, np.arange(10), 0)  # a corpus shorter than a prompt wraps around
    assert len(short[2]) == 879 and set(short[2].tolist()) == set(range(10))
    with pytest.raises(ValueError):
        materialize_prompts(trace, np.array([0.5, 1.5]), 0)


def test_session_turns_get_their_new_user_tokens():
    script = SessionScript("s", (Turn(10, 5, 0.0), Turn(3, 7, 1.0)))
    turns = materialize_session(script, CORPUS, 1)
    assert [len(t) for t in turns] == [10, 3]
    assert all(np.isin(t, CORPUS).all() for t in turns)
