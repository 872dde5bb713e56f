"""Prompt token ids for the compute backend, cut from a tokenized text corpus.

Requests with prefix block ids get them honoured: every distinct block id is given its own
`prefix_block_size`-token stretch of the corpus, so two prompts whose first k ids are equal begin
with the same k blocks of tokens (a prefix-cache hit in compute mode is a real hit), and prompts
whose ids differ differ there. Distinct ids get distinct corpus offsets while the corpus has at
least as many positions as there are ids. The part of a prompt no id covers is a stretch of the
corpus at a random offset. The corpus wraps around where a stretch runs past its end.
"""

from __future__ import annotations

import numpy as np

from workloads.seeding import generator
from workloads.sessions import SessionScript
from workloads.table import Trace


def _cut(corpus: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """`corpus` from each of `starts` for `length` tokens, concatenated (wrapping around the end)."""
    positions = (np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length, dtype=np.int64)).ravel()
    return corpus[positions % len(corpus)]


def _checked(corpus) -> np.ndarray:
    corpus = np.asarray(corpus)
    if corpus.ndim != 1 or len(corpus) == 0 or not np.issubdtype(corpus.dtype, np.integer):
        raise ValueError(f"corpus must be a non-empty 1-D array of token ids, got {corpus.dtype} {corpus.shape}")
    return corpus


def materialize_prompts(trace: Trace, corpus: np.ndarray, rng: np.random.Generator | int) -> list[np.ndarray]:
    """One array of prompt token ids per request, in row order, each `prompt_tokens` long.

    Draws, in order: one corpus offset per distinct block id (ascending id), then one per request.
    """
    corpus = _checked(corpus)
    rng = generator(rng)
    requests = trace.requests
    block_size = trace.prefix_block_size or 0
    id_lists = [ids for ids in requests["prefix_block_ids"] if ids] if block_size else []
    distinct = (
        np.unique(np.concatenate([np.asarray(ids, dtype=np.int64) for ids in id_lists]))
        if id_lists
        else np.zeros(0, np.int64)
    )
    enough = len(distinct) <= len(corpus)
    block_starts = rng.choice(len(corpus), size=len(distinct), replace=not enough)
    request_starts = rng.integers(0, len(corpus), len(requests))
    prompts = []
    for row, (length, ids) in enumerate(zip(requests["prompt_tokens"].to_numpy(), requests["prefix_block_ids"])):
        covered = min(int(length), len(ids) * block_size) if (ids and block_size) else 0
        parts = []
        if covered:
            starts = block_starts[
                np.searchsorted(distinct, np.asarray(ids[: -(-covered // block_size)], dtype=np.int64))
            ]
            parts.append(_cut(corpus, starts, block_size)[:covered])
        parts.append(_cut(corpus, request_starts[row : row + 1], int(length) - covered))
        prompts.append(np.concatenate(parts))
    return prompts


def materialize_session(script: SessionScript, corpus: np.ndarray, rng: np.random.Generator | int) -> list[np.ndarray]:
    """The new user token ids of each turn of `script` (the history is the scheduler's: it holds the real replies)."""
    corpus = _checked(corpus)
    starts = generator(rng).integers(0, len(corpus), len(script.turns))
    return [_cut(corpus, starts[i : i + 1], turn.user_tokens) for i, turn in enumerate(script.turns)]
