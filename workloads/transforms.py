"""Transforms of a trace's request table: time window, rate scale, length caps, sampling, new arrivals.

Each returns a new `Trace` (rows renumbered in arrival order, parent links remapped, a parent that
is no longer in the table becomes <NA>); the summary still describes the file that was read.
"""

from __future__ import annotations

import numpy as np

from workloads.seeding import generator
from workloads.table import Trace


def window(trace: Trace, start_s: float, end_s: float) -> Trace:
    """The requests arriving in [start_s, end_s), with times counted from start_s."""
    if not end_s > start_s:
        raise ValueError(f"end_s ({end_s}) must be > start_s ({start_s})")
    requests = trace.requests
    arrival = requests["arrival_s"]
    kept = requests[(arrival >= start_s) & (arrival < end_s)].copy()
    kept["arrival_s"] -= start_s
    return trace.with_requests(kept)


def scale_rate(trace: Trace, factor: float) -> Trace:
    """Replay `factor` times faster (arrival times divided by `factor`; 0.5 = half the rate)."""
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    requests = trace.requests.copy()
    requests["arrival_s"] /= factor
    return trace.with_requests(requests)


def cap_lengths(trace: Trace, max_model_len: int, *, policy: str = "truncate") -> Trace:
    """Fit every request in a context of `max_model_len` tokens (prompt + output).

    "truncate": prompts longer than max_model_len - 1 are cut (their prefix block ids with them),
    then outputs are cut to the room left. "drop": requests that do not fit are removed.
    """
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
    requests = trace.requests.copy()
    prompt = requests["prompt_tokens"].to_numpy()
    output = requests["output_tokens"].to_numpy()
    if policy == "drop":
        return trace.with_requests(requests[prompt + output <= max_model_len])
    if policy != "truncate":
        raise ValueError(f"policy must be 'truncate' or 'drop', got {policy!r}")
    new_prompt = np.minimum(prompt, max_model_len - 1)
    requests["prompt_tokens"] = new_prompt
    requests["output_tokens"] = np.minimum(output, max_model_len - new_prompt)
    block_size = trace.prefix_block_size
    if block_size:
        blocks = -(-new_prompt // block_size)
        requests["prefix_block_ids"] = [
            ids if ids is None or cut == len(ids) else ids[:cut]
            for ids, cut in zip(requests["prefix_block_ids"], blocks)
        ]
    return trace.with_requests(requests)


def sample(trace: Trace, n: int, rng: np.random.Generator | int) -> Trace:
    """`n` requests drawn without replacement, kept in arrival order with their own arrival times."""
    if not 0 <= n <= len(trace):
        raise ValueError(f"cannot sample {n} of {len(trace)} requests")
    rows = np.sort(generator(rng).choice(len(trace), size=n, replace=False))
    return trace.with_requests(trace.requests.iloc[rows])


def with_arrivals(trace: Trace, arrival_s: np.ndarray) -> Trace:
    """The same requests at new arrival times (one per row, e.g. `PoissonArrivals(r).sample(len(trace), rng)`).

    Rows are re-sorted by the new times; turns of one session may then arrive out of turn order.
    """
    arrival_s = np.asarray(arrival_s, dtype=np.float64)
    if arrival_s.shape != (len(trace),) or not np.all(np.isfinite(arrival_s)):
        raise ValueError(f"need {len(trace)} finite arrival times, got shape {arrival_s.shape}")
    requests = trace.requests.copy()
    requests["arrival_s"] = arrival_s
    return trace.with_requests(requests)
