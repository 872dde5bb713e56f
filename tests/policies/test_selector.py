"""The shared selector and every policy's contract, on synthetic scores."""

from __future__ import annotations

import numpy as np
import pytest

from kvcache.policies import POLICY_NAMES, SlotState, make_policy, select_evictions
from kvcache.policies.rules import max_pool


def state(n: int, seed: int = 0, shuffled: bool = True) -> SlotState:
    rng = np.random.default_rng(seed)
    positions = rng.permutation(n) + 100 if shuffled else np.arange(n) + 100  # slots hold any order
    return SlotState(positions=positions, attn_sum=rng.random(n), attn_last=rng.random(n),
                     key_norm=rng.random(n) + 1, prefill=rng.random(n))


@pytest.mark.parametrize("name", POLICY_NAMES)
@pytest.mark.parametrize("n, evict", [(50, 1), (50, 20), (200, 150), (9, 9)])
def test_contract(name, n, evict):
    policy = make_policy(name, seed=3) if name == "random" else make_policy(name)
    st = state(n, seed=n)
    gone = select_evictions(policy, st, evict)
    assert len(gone) == evict == len(set(gone.tolist())) and (np.diff(gone) > 0).all()
    kept = np.setdiff1d(np.arange(n), gone)
    assert len(kept) == n - evict  # the budget is met exactly
    protected = policy.protected(st, n - evict)
    assert protected[kept].sum() == protected.sum()  # sinks and recent window are always kept
    # every kept unprotected slot scores at least as high as every evicted one
    scores = policy.scores(st) if name != "random" else None
    if scores is not None and len(gone) and (~protected[kept]).any():
        assert scores[kept[~protected[kept]]].min() >= scores[gone].max()


def test_streaming_keeps_sinks_and_recent():
    st = state(40)
    gone = select_evictions(make_policy("streaming", sink_tokens=4), st, 10)
    kept_positions = np.sort(np.delete(st.positions, gone))
    assert kept_positions.tolist() == [100, 101, 102, 103] + list(range(114, 140))


def test_window_keeps_the_newest():
    st = state(30)
    gone = select_evictions(make_policy("window"), st, 12)
    assert np.sort(st.positions[gone]).tolist() == list(range(100, 112))


def test_h2o_is_heavy_half_and_recent_half():
    st = state(40, shuffled=False)
    gone = select_evictions(make_policy("h2o"), st, 20)  # keep 20: 10 recent + 10 heaviest
    kept = np.setdiff1d(np.arange(40), gone)
    assert set(range(30, 40)) <= set(kept.tolist())
    heavy = np.argsort(-st.attn_sum[:30], kind="stable")[:10]
    assert set(heavy.tolist()) == set(kept.tolist()) - set(range(30, 40))


def test_random_is_seeded():
    st = state(60)
    a = select_evictions(make_policy("random", seed=1), st, 30)
    b = select_evictions(make_policy("random", seed=1), st, 30)
    c = select_evictions(make_policy("random", seed=2), st, 30)
    assert (a == b).all() and not (a == c).all()


def test_ties_go_to_the_newer_token():
    st = SlotState(positions=np.array([5, 3, 9, 1]), attn_sum=np.ones(4))
    gone = select_evictions(make_policy("h2o", recent_tokens=0), st, 2)
    assert sorted(st.positions[gone].tolist()) == [1, 3]


def test_bad_names_and_options():
    with pytest.raises(ValueError, match=r"unknown eviction policy 'h3o'; known: full, window, streaming, h2o"):
        make_policy("h3o")
    with pytest.raises(ValueError, match=r"policy 'streaming'.*options: sink_tokens"):
        make_policy("streaming", sinks=4)
    with pytest.raises(ValueError, match="group_reduce"):
        make_policy("h2o", group_reduce="max")


def test_max_pool():
    assert max_pool(np.array([0, 5, 0, 0, 0, 1, 0.0]), 3).tolist() == [5, 5, 5, 0, 1, 1, 1]
