"""Closed-loop sessions for `kvsim sweep`: the conversation scripts the clients work through, and
the metrics of one point measured over its steady window [warmup_s, duration_s).

Script i depends only on (seed, i), never on the number of clients, so every point of a sweep
draws the same conversations in the same order. Clients never run out: the scripts are an
endless stream and the run stops at duration_s, so requests still in flight then are counted as
`requests_in_flight` (completed + rejected + in flight = submitted).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from kvsim.config import opt
from kvsim.options import _fail, _positive


@dataclass(frozen=True)
class SessionOptions:
    SECTION = "sessions"
    sessions: tuple[int, ...] = opt((1, 2, 4, 8, 16, 32, 64, 128, 256),
                                    "numbers of concurrent sessions (closed-loop clients); 1,2,4,...,256 works",
                                    metavar="N,N,...")
    duration_s: float = opt(20.0, "simulated seconds per point")
    warmup_s: float = opt(5.0, "simulated seconds left out of the measurement at the start")
    knee_gain: float = opt(0.05, "the knee is the smallest number of sessions after which each doubling adds "
                                 "less than this fraction of throughput")
    trace: str | None = opt(None, "trace whose prompt and output lengths the first turns draw from (none: the "
                                  "shipped Azure 2023 conversation slice)", metavar="TRACE")
    turns: tuple[int, ...] = opt((1, 6), "MIN,MAX turns per conversation (uniform)", metavar="MIN,MAX")
    followup_tokens: float = opt(100.0, "mean new user tokens of a later turn (lognormal, CV 1)")
    think_time_s: float = opt(0.0, "mean pause of a user between a reply and the next turn (exponential); 0: "
                                   "each client sends its next turn at once, so N sessions keep N requests open")

    def __post_init__(self):
        if min(self.sessions) < 1 or list(self.sessions) != sorted(set(self.sessions)):
            _fail(self, "sessions", f"must be increasing numbers >= 1, got {self.sessions}")
        _positive(self, "duration_s", "knee_gain", "followup_tokens")
        if not 0 <= self.warmup_s < self.duration_s:
            _fail(self, "warmup_s", f"must be in [0, duration_s), got {self.warmup_s}")
        if len(self.turns) != 2 or not 1 <= self.turns[0] <= self.turns[1]:
            _fail(self, "turns", f"expected MIN,MAX with 1 <= MIN <= MAX, got {self.turns}")
        if self.think_time_s < 0:
            _fail(self, "think_time_s", f"must be >= 0, got {self.think_time_s}")


def scripts(options: SessionOptions, seed: int, max_context_tokens: int):
    """An endless, seeded stream of workloads.SessionScript: first turns take their prompt and
    reply lengths from the trace, later turns add lognormal follow-ups and trace-length replies."""
    import numpy as np

    from kvsim.options import WorkloadOptions
    from kvsim.simulate import trace_path
    from workloads import EmpiricalLengths, LognormalLengths, UniformLengths, read_trace, session_scripts

    source = read_trace(trace_path(WorkloadOptions(trace=options.trace)))
    turns = UniformLengths(*options.turns)
    followups = LognormalLengths(options.followup_tokens, 1.0)
    prompts, outputs = EmpiricalLengths.of(source, "prompt_tokens"), EmpiricalLengths.of(source, "output_tokens")
    for i in itertools.count():
        yield session_scripts(1, turns=turns, user_tokens=followups, output_tokens=outputs,
                              think_time_s=options.think_time_s, rng=np.random.default_rng([seed, i]),
                              first_user_tokens=prompts, max_context_tokens=max_context_tokens)[0]


def window_metrics(requests, options: SessionOptions) -> dict:
    """Throughput and latency over [warmup_s, duration_s) (replacing the whole-run values)."""
    import numpy as np

    start, end = options.warmup_s, options.duration_s
    span = end - start
    out_tokens = prompt_tokens = 0
    for first, itl, prompt in zip(requests.first_token_s, requests.itl_ms, requests.prompt_tokens):
        if first != first or first is None:  # NaN: no token yet
            continue
        times = first + np.concatenate([[0.0], np.cumsum(itl)]) / 1e3
        out_tokens += int(((times >= start) & (times < end)).sum())
        prompt_tokens += int(prompt) if start <= first < end else 0
    late = requests[requests.arrival_s >= start]
    done = late[late.status == "finished"]
    out = {"output_tokens_per_s": out_tokens / span, "total_tokens_per_s": (out_tokens + prompt_tokens) / span,
           "requests_in_flight": int((~requests.status.isin(["finished", "rejected"])).sum()),
           "measured_from_s": start, "measured_to_s": end}
    for name, values in (("ttft_ms", late.ttft_ms), ("tpot_ms", done.tpot_ms), ("e2el_ms", done.e2el_ms)):
        v = values.dropna().to_numpy(dtype=float)
        for p in (50, 90, 99):
            out[f"{name}_p{p}"] = float(np.percentile(v, p)) if len(v) else float("nan")
    return out


def knee(sessions: list[int], throughput: list[float], gain: float) -> int | None:
    """The smallest N after which every step to a larger N adds less than `gain` throughput per
    doubling of N; None when the largest N still adds more (no knee in the range)."""
    pairs = sorted(zip(sessions, throughput))
    for i in range(len(pairs) - 1):
        if all(_per_doubling(pairs[j], pairs[j + 1]) < gain for j in range(i, len(pairs) - 1)):
            return pairs[i][0]
    return None


def _per_doubling(a: tuple[int, float], b: tuple[int, float]) -> float:
    (n0, t0), (n1, t1) = a, b
    if t0 <= 0:
        return float("inf") if t1 > 0 else 0.0
    return (t1 / t0) ** (1 / math.log2(n1 / n0)) - 1
