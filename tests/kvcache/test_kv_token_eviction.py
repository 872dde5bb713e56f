"""Token-level eviction: holes refilled by the next tokens, emptied blocks released, compaction,
the block bound under a budget, and the bytes checked through a real store."""

from __future__ import annotations

import numpy as np
import pytest
from kvcache_shadow import ShadowCache

from kvcache.copy_ops import DEVICE
from kvcache.errors import SequenceStateError


def _prefill(cache: ShadowCache, seq: str, n: int) -> None:
    cache.tokens[seq] = [(7 * i) % 50 for i in range(n)]
    cache.mgr.allocate(seq, n)
    cache.write(seq, cache.mgr.slot_mapping(seq, 0, n), list(range(n)))


def _decode(cache: ShadowCache, seq: str) -> int:
    tokens = cache.tokens[seq]
    tokens.append(len(tokens) % 50)
    cache.write(seq, cache.mgr.append_slots(seq), [len(tokens) - 1])
    return len(tokens) - 1


def test_evict_one_append_one_needs_no_copy():
    cache = ShadowCache(8, 4)
    mgr = cache.mgr
    _prefill(cache, "a", 10)
    mgr.take_pending_copies()
    assert mgr.evict_tokens("a", [5], keep_holes=1) == []
    assert mgr.num_holes("a") == 1 and mgr.slot_positions("a")[5] == -1
    flat_5 = mgr.block_table("a")[1] * 4 + 1
    pos = len(cache.tokens["a"])
    cache.tokens["a"].append(3)
    assert mgr.append_slots("a") == [flat_5]  # the new token takes the hole
    assert mgr.take_pending_copies() == [] and mgr.num_slots("a") == 10
    cache.write("a", [flat_5], [pos])
    assert mgr.slot_positions("a")[5] == 10
    cache.verify("a", set(range(11)) - {5})


def test_wholly_evicted_middle_block_is_released_and_the_last_block_takes_its_place():
    cache = ShadowCache(8, 4)
    mgr = cache.mgr
    _prefill(cache, "a", 12)
    blocks = mgr.block_table("a")
    moves = mgr.evict_tokens("a", [4, 5, 6, 7])
    assert mgr.block_table("a") == [blocks[0], blocks[2]] and mgr.num_slots("a") == 8
    assert moves == [(8, 4), (9, 5), (10, 6), (11, 7)]  # logical renumbering only
    assert mgr.take_pending_copies() == []  # no byte moved
    assert mgr.stats()["blocks_free"] == 6
    cache.verify("a", set(range(12)) - {4, 5, 6, 7})


def test_long_prefill_cut_to_a_budget_compacts_and_frees_the_tail():
    cache = ShadowCache(40, 4)
    mgr = cache.mgr
    _prefill(cache, "a", 100)
    rng = np.random.default_rng(0)
    keep = set(rng.choice(100, size=20, replace=False).tolist())
    before = mgr.slot_positions("a")
    moves = mgr.evict_tokens("a", [s for s in range(100) if s not in keep], keep_holes=0)
    assert mgr.num_slots("a") == 20 and mgr.num_holes("a") == 0 and len(mgr.block_table("a")) == 5
    after = mgr.slot_positions("a")
    assert sorted(after) == sorted(keep)
    for src, dst in moves:
        assert after[dst] == before[src]
    assert all(c.kind == DEVICE and c.num_slots == 1 for c in mgr.pool.copies)
    cache.verify("a", keep)
    mgr.check_invariants()


@pytest.mark.parametrize("policy", ["streaming", "random"])
def test_a_budget_keeps_the_sequence_within_ceil_budget_over_block_size_plus_one(policy):
    block_size, budget, sinks = 4, 18, 2
    cache = ShadowCache(64, block_size)
    mgr = cache.mgr
    rng = np.random.default_rng(1)
    _prefill(cache, "a", budget)
    valid = set(range(budget))
    for _ in range(150):
        valid.add(_decode(cache, "a"))
        held = [(s, p) for s, p in enumerate(mgr.slot_positions("a")) if p >= 0]
        if policy == "streaming":  # the oldest token after the sinks
            victim = min((p, s) for s, p in held if p >= sinks)[1]
        else:
            victim = held[int(rng.integers(len(held)))][0]
        valid.discard(mgr.slot_positions("a")[victim])
        mgr.evict_tokens("a", [victim], keep_holes=1)
        assert mgr.num_tokens("a") == budget
        assert len(mgr.block_table("a")) <= -(-budget // block_size) + 1
        mgr.check_invariants()
    cache.verify("a", valid)


def test_eviction_in_a_shared_block_copies_only_when_the_hole_is_written():
    cache = ShadowCache(8, 4)
    mgr = cache.mgr
    _prefill(cache, "p", 8)
    cache.tokens["c"] = list(cache.tokens["p"])
    mgr.fork("p", "c", token_ids=cache.tokens["c"])
    mgr.evict_tokens("c", [1], keep_holes=1)
    assert mgr.stats()["cow_copies"] == 0  # bytes unchanged: nothing to copy yet
    mgr.evict_tokens("c", [4, 5, 6, 7], keep_holes=1)  # a whole shared block: just released
    assert mgr.stats()["cow_copies"] == 0 and len(mgr.block_table("c")) == 1
    _decode(cache, "c")  # fills the hole in the shared block: now it is copied
    assert mgr.stats()["cow_copies"] == 1 and mgr.block_table("c")[0] != mgr.block_table("p")[0]
    cache.verify("p", set(range(8)))
    cache.verify("c", {0, 2, 3, 8})
    mgr.check_invariants()


def test_compact_closes_every_hole():
    cache = ShadowCache(8, 4)
    mgr = cache.mgr
    _prefill(cache, "a", 9)
    mgr.evict_tokens("a", [0, 3], keep_holes=2)
    assert mgr.num_holes("a") == 2
    moves = mgr.compact("a")
    assert mgr.num_holes("a") == 0 and mgr.num_slots("a") == 7 and len(moves) == 2
    cache.verify("a", set(range(9)) - {0, 3})


def test_bad_evictions_are_refused_before_any_change():
    cache = ShadowCache(8, 4)
    mgr = cache.mgr
    _prefill(cache, "a", 6)
    mgr.evict_tokens("a", [2], keep_holes=1)
    for bad in ([6], [2], [1, 1], [-1]):
        with pytest.raises(SequenceStateError, match="sequence 'a'"):
            mgr.evict_tokens("a", bad, keep_holes=1)
    assert mgr.slot_positions("a") == [0, 1, -1, 3, 4, 5]
    with pytest.raises(SequenceStateError, match="keep_holes"):
        mgr.evict_tokens("a", [0], keep_holes=-1)
