"""Multi-turn session scripts for closed-loop clients, and their open-loop request table.

A session is a conversation: turn k sends the whole history (every earlier turn's user tokens and
output) plus `user_tokens` new ones, and the history grows by both each turn. A closed-loop
client sends turn 1, waits for its reply, thinks `think_time_s` of the next turn, sends it, and so
on; the scheduler owns that loop and the real reply times. `max_context_tokens` ends a session
before its history would outgrow the model's context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workloads.seeding import generator
from workloads.synthetic import LengthDistribution
from workloads.table import Trace, TraceSummary, make_table, renumber


@dataclass(frozen=True)
class Turn:
    user_tokens: int  # new tokens the user adds this turn
    output_tokens: int  # tokens of the reply
    think_time_s: float  # the client's pause after the previous reply before sending this turn (0 for turn 1)


@dataclass(frozen=True)
class SessionScript:
    session_id: str
    turns: tuple[Turn, ...]

    def prompt_tokens(self, index: int) -> int:
        """The prompt of turn `index` (0-based): all earlier prompts' new tokens and outputs, plus its own."""
        history = sum(turn.user_tokens + turn.output_tokens for turn in self.turns[:index])
        return history + self.turns[index].user_tokens

    @property
    def context_tokens(self) -> int:
        """The conversation's length after the last reply."""
        return sum(turn.user_tokens + turn.output_tokens for turn in self.turns)


def session_scripts(
    num_sessions: int,
    *,
    turns: LengthDistribution,
    user_tokens: LengthDistribution,
    output_tokens: LengthDistribution,
    think_time_s: float,
    rng: np.random.Generator | int,
    first_user_tokens: LengthDistribution | None = None,
    max_context_tokens: int | None = None,
) -> list[SessionScript]:
    """`num_sessions` scripts. Draws, in order: turns per session; user tokens, output tokens and
    exponential think times (mean `think_time_s`) for all turns; first-turn user tokens if given.
    """
    if num_sessions < 1 or think_time_s < 0:
        raise ValueError(f"need num_sessions >= 1 and think_time_s >= 0, got {num_sessions}, {think_time_s}")
    rng = generator(rng)
    counts = turns.sample(num_sessions, rng)
    total = int(counts.sum())
    users = user_tokens.sample(total, rng)
    outputs = output_tokens.sample(total, rng)
    thinks = rng.exponential(think_time_s, total) if think_time_s > 0 else np.zeros(total)
    firsts = first_user_tokens.sample(num_sessions, rng) if first_user_tokens is not None else None
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    scripts = []
    for s, (start, count) in enumerate(zip(starts, counts)):
        script = [
            Turn(int(users[i]), int(outputs[i]), float(thinks[i]) if i > start else 0.0)
            for i in range(start, start + count)
        ]
        if firsts is not None:
            script[0] = Turn(int(firsts[s]), script[0].output_tokens, 0.0)
        scripts.append(SessionScript(f"s{s}", _within(tuple(script), max_context_tokens)))
    return scripts


def _within(turns: tuple[Turn, ...], max_context_tokens: int | None) -> tuple[Turn, ...]:
    """The turns that fit the context; a first turn that does not fit is shortened to fit."""
    if max_context_tokens is None:
        return turns
    if max_context_tokens < 2:
        raise ValueError(f"max_context_tokens must be >= 2, got {max_context_tokens}")
    first = turns[0]
    user = min(first.user_tokens, max_context_tokens - 1)
    kept = [Turn(user, min(first.output_tokens, max_context_tokens - user), 0.0)]
    history = user + kept[0].output_tokens
    for turn in turns[1:]:
        history += turn.user_tokens + turn.output_tokens
        if history > max_context_tokens:
            break
        kept.append(turn)
    return tuple(kept)


def sessions_to_trace(
    scripts: list[SessionScript], *, start_s: np.ndarray | None = None, block_size: int | None = None
) -> Trace:
    """The open-loop view of `scripts`: turn k arrives at its session's start plus the think times up
    to it, as if every reply took no time. With `block_size`, prompts get prefix block ids: a full
    block has one id per (session, position), shared by every turn that contains it; a partial
    last block gets an id of its own (its tokens are not a whole cached block).
    """
    start_s = np.zeros(len(scripts)) if start_s is None else np.asarray(start_s, dtype=np.float64)
    arrival_s, prompt_tokens, output_tokens, session_id, turn_number, parent_row, block_ids = ([] for _ in range(7))
    next_id = 0
    for script, clock in zip(scripts, start_s):
        first_full_id = next_id
        next_id += script.context_tokens // block_size if block_size else 0
        for index, turn in enumerate(script.turns):
            clock += turn.think_time_s
            prompt = script.prompt_tokens(index)
            ids = None
            if block_size:
                ids = tuple(range(first_full_id, first_full_id + prompt // block_size))
                if prompt % block_size:
                    ids, next_id = ids + (next_id,), next_id + 1
            parent_row.append(len(arrival_s) - 1 if index else -1)
            arrival_s.append(clock)
            prompt_tokens.append(prompt)
            output_tokens.append(turn.output_tokens)
            session_id.append(script.session_id)
            turn_number.append(index + 1)
            block_ids.append(ids)
    requests = make_table(
        np.asarray(arrival_s, dtype=np.float64),
        np.asarray(prompt_tokens, dtype=np.int64),
        np.asarray(output_tokens, dtype=np.int64),
        session_id=session_id,
        turn=np.asarray(turn_number, dtype=np.int64),
        parent_row=np.asarray(parent_row, dtype=np.int64),
        prefix_block_ids=block_ids,
    )
    n = len(requests)
    return Trace(renumber(requests), TraceSummary(n, n), block_size, f"sessions: {len(scripts)} scripts", "sessions")
