"""Simulation invariants: conservation, determinism, capacity, queueing theory, the fast path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scheduler.build import analytic_simulation
from scheduler.request import Request
from tests.scheduler.helpers import FixedBackend, req, sim_with
from workloads.sessions import SessionScript, Turn


def poisson_requests(n: int, rate: float, seed: int, prompt=(16, 600), output=(1, 200)) -> list[Request]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1 / rate, n))
    p = rng.integers(*prompt, n)
    o = rng.integers(*output, n)
    return [Request(i, float(t[i]), int(p[i]), int(o[i])) for i in range(n)]


def test_every_request_completes_or_is_rejected_with_a_reason():
    requests = poisson_requests(300, 50.0, seed=1) + [
        req(1000, 0.1, 5000, 10),  # longer than max_model_len
        req(1001, 0.2, 0, 10),  # empty prompt
        req(1002, 0.3, 1900, 100),  # fits the model, not the cache
    ]
    sim = analytic_simulation("llama-3.1-8b", "h100", num_blocks=100, max_model_len=4096)
    sim.add_trace(requests)
    res = sim.run()
    df = res.requests
    assert len(df) == len(requests)
    assert set(df.status) == {"finished", "rejected"}
    rejected = df[df.rejected].set_index("request_id").reject_reason
    assert "exceeds max_model_len 4096" in rejected[1000]
    assert "needs >= 1 prompt" in rejected[1001]
    assert "needs 125 KV blocks, the cache has 99 usable of 100" in rejected[1002]
    assert res.summary["requests_completed"] + res.summary["requests_rejected"] == res.summary["requests_submitted"]
    assert (df[~df.rejected].output_tokens == [r.output_tokens for r in requests[:300]]).all()


def test_blocks_never_exceed_capacity_and_preemption_happens_when_they_would():
    sim = analytic_simulation("llama-3.1-8b", "h100", num_blocks=200, max_num_seqs=64)
    sim.add_trace(poisson_requests(200, 200.0, seed=2, prompt=(100, 400), output=(100, 400)))
    res = sim.run()
    assert res.steps.blocks_used.max() <= 200
    assert (res.steps.blocks_used + res.steps.blocks_free + res.steps.blocks_cached == 200).all()
    assert res.summary["preemptions"] > 0 and res.summary["requests_completed"] == 200


def test_same_seed_same_frames_byte_for_byte():
    def run():
        sim = analytic_simulation("llama-3.1-8b", "h100", num_blocks=300, budget_tokens=256,
                                  enable_prefix_caching=True)
        sim.add_trace(poisson_requests(150, 30.0, seed=3))
        return sim.run()

    a, b = run(), run()
    for name in ("requests", "steps"):
        fa, fb = getattr(a, name), getattr(b, name)
        assert fa.to_csv().encode() == fb.to_csv().encode()


@pytest.mark.parametrize("budget, prefix", [(None, False), (200, False), (None, True)])
def test_fast_path_equals_stepping_one_by_one(budget, prefix):
    def run(max_decode_run):
        sim = analytic_simulation("llama-3.1-8b", "h100", num_blocks=400, budget_tokens=budget,
                                  enable_prefix_caching=prefix, max_decode_run=max_decode_run)
        reqs = poisson_requests(120, 8.0, seed=4)
        if prefix:  # shared system prompts: requests i and i+3 share their first 64 tokens
            reqs = [Request(r.request_id, r.arrival_s, r.prompt_tokens, r.output_tokens,
                            token_ids=tuple([r.request_id % 3] * 64 + list(range(10**6 * r.request_id,
                                                                                10**6 * r.request_id + r.prompt_tokens - 64))))
                    for r in reqs if r.prompt_tokens > 64]
        sim.add_trace(reqs)
        return sim.run()

    one, fast = run(1), run(256)
    assert fast.summary["num_steps"] == one.summary["num_steps"]
    pd.testing.assert_frame_equal(fast.requests, one.requests)
    pd.testing.assert_frame_equal(fast.steps, one.steps)
    if budget:
        assert one.summary["evicted_tokens"] > 0


def test_eviction_budget_bounds_blocks_per_sequence():
    budget, bs = 100, 16
    sim = sim_with([req(0, 0.0, 300, 400)], budget_tokens=budget, num_blocks=64, block_size=bs)
    held = []
    orig = sim.scheduler.postprocess

    def spy(out, now, token_ids=None):
        finished = orig(out, now, token_ids)
        if 0 in sim.kv:
            held.append(len(sim.kv.block_table(0)))
        return finished

    sim.scheduler.postprocess = spy
    res = sim.run()
    assert max(held[1:]) <= -(-budget // bs) + 1
    assert res.requests.evicted_tokens[0] == 300 + 400 - 1 - budget


def test_mdl_queue_matches_theory_and_littles_law():
    """One server (max_num_seqs=1), Poisson arrivals, fixed service D: M/D/1."""
    rate, service, n = 0.5, 1.0, 100000
    rng = np.random.default_rng(5)
    t = np.cumsum(rng.exponential(1 / rate, n))
    requests = [Request(i, float(t[i]), 1, 1) for i in range(n)]
    res = sim_with(requests, FixedBackend(base_s=service), num_blocks=8, block_size=4, max_num_seqs=1).run()
    df = res.requests
    rho = rate * service
    expected_wait = rho * service / (2 * (1 - rho))
    assert df.queue_ms.mean() / 1e3 == pytest.approx(expected_wait, rel=0.05)
    # Little's law on the measured data, over a window after warm-up
    lo, hi = t[n // 10], t[-1]
    inside = df[(df.arrival_s >= lo) & (df.arrival_s < hi)]
    arrivals, finishes = df.arrival_s.to_numpy(), df.finish_s.to_numpy()
    grid = np.linspace(lo, hi, 200001)
    in_system = np.searchsorted(np.sort(arrivals), grid, "right") - np.searchsorted(np.sort(finishes), grid, "right")
    little_l = in_system.mean()
    lam = len(inside) / (hi - lo)
    assert little_l == pytest.approx(lam * inside.e2el_ms.mean() / 1e3, rel=0.02)


def test_closed_loop_sessions_reuse_their_prefix():
    scripts = [SessionScript(str(i), (Turn(200, 50, 0.0), Turn(40, 30, 2.0), Turn(40, 30, 2.0))) for i in range(6)]
    sim = analytic_simulation("llama-3.1-8b", "h100", num_blocks=2000, enable_prefix_caching=True)
    sim.add_sessions(scripts, num_clients=3)
    res = sim.run()
    df = res.requests
    assert len(df) == 18 and (df.status == "finished").all()
    assert len(res.sessions) == 6 and (res.sessions.turns_completed == 3).all()
    later = df[df.turn > 0]
    # turn k+1 reuses every full block of turn k's prompt + output
    assert (later.prefix_hit_tokens >= (later.prompt_tokens - 40 - 30) // 16 * 16 - 16).all()
    assert (df[df.turn == 0].prefix_hit_tokens == 0).all()
    # at most 3 conversations in flight at once
    assert res.steps.num_running.max() <= 3
