"""Multi-turn session scripts for closed-loop clients, and their open-loop table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workloads import FixedLengths, SessionScript, Turn, UniformLengths, session_scripts, sessions_to_trace


def scripts(seed=0, **overrides):
    options = dict(
        turns=UniformLengths(1, 6),
        user_tokens=UniformLengths(10, 50),
        output_tokens=UniformLengths(5, 40),
        think_time_s=2.0,
        rng=seed,
    )
    options.update(overrides)
    return session_scripts(200, **options)


def test_prompt_of_a_turn_is_the_history_plus_its_new_tokens():
    script = SessionScript("s", (Turn(10, 5, 0.0), Turn(3, 7, 1.5), Turn(4, 2, 0.5)))
    assert [script.prompt_tokens(k) for k in range(3)] == [10, 18, 29]
    assert script.context_tokens == 31


def test_scripts_are_seeded_and_drawn_from_the_distributions():
    first, again, other = scripts(0), scripts(0), scripts(1)
    assert first == again and first != other
    turns = [turn for script in first for turn in script.turns]
    counts = [len(script.turns) for script in first]
    assert min(counts) == 1 and max(counts) == 6
    assert all(10 <= t.user_tokens <= 50 and 5 <= t.output_tokens <= 40 for t in turns)
    assert all(script.turns[0].think_time_s == 0.0 for script in first)
    later = np.array([t.think_time_s for script in first for t in script.turns[1:]])
    assert later.mean() == pytest.approx(2.0, rel=0.15) and later.min() > 0
    assert len({script.session_id for script in first}) == 200


def test_first_turn_and_context_cap():
    capped = scripts(first_user_tokens=FixedLengths(400), max_context_tokens=500)
    assert all(script.turns[0].user_tokens == 400 for script in capped)
    assert all(script.context_tokens <= 500 for script in capped)
    uncapped = scripts(first_user_tokens=FixedLengths(400))
    assert any(script.context_tokens > 500 for script in uncapped)  # so the cap did cut sessions
    tiny = session_scripts(
        1,
        turns=FixedLengths(3),
        user_tokens=FixedLengths(900),
        output_tokens=FixedLengths(300),
        think_time_s=0.0,
        rng=0,
        max_context_tokens=1000,
    )
    assert tiny[0].turns == (Turn(900, 100, 0.0),)  # the first turn shortened to fit, the rest dropped


def test_open_loop_table_links_turns_and_shares_full_blocks():
    two = [
        SessionScript("a", (Turn(20, 12, 0.0), Turn(5, 3, 1.0))),  # prompts 20, 37
        SessionScript("b", (Turn(40, 1, 0.0),)),
    ]
    trace = sessions_to_trace(two, start_s=np.array([0.5, 0.0]), block_size=16)
    requests = trace.requests
    assert requests["arrival_s"].tolist() == [0.0, 0.5, 1.5]
    assert requests["session_id"].tolist() == ["b", "a", "a"]
    assert requests["prompt_tokens"].tolist() == [40, 20, 37]
    assert requests["parent_id"].tolist() == [pd.NA, pd.NA, 1]
    assert requests["turn"].tolist() == [1, 1, 2]
    ids = requests["prefix_block_ids"].tolist()
    # session a (context 40) owns full-block ids 0, 1 and its partial blocks get 2, 3;
    # session b (context 41) owns 4, 5 and its partial block gets 6
    assert ids[1] == (0, 2) and ids[2] == (0, 1, 3)
    assert ids[0] == (4, 5, 6)
    assert trace.prefix_block_size == 16 and trace.format == "sessions"
