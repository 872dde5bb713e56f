"""KVCacheManager: admission, growth, copy-on-write, fork, swap, and every bad call named."""

from __future__ import annotations

import pytest
from kvcache_shadow import ShadowCache, new_manager

from kvcache.copy_ops import DEVICE, SWAP_IN, SWAP_OUT
from kvcache.errors import (DoubleFreeError, OutOfBlocksError, SequenceStateError,
                            SharedBlockWriteError, SwapSpaceError, UnknownSequenceError)
from kvcache.manager import KVCacheManager


def test_watermark_holds_back_admission_but_not_allocation():
    mgr = KVCacheManager(100, 16, watermark=0.1)  # 10 blocks kept for running sequences
    assert mgr.watermark_blocks == 10
    assert mgr.can_allocate(90 * 16) and not mgr.can_allocate(90 * 16 + 1)
    mgr.allocate("a", 95 * 16)  # the caller may overrule the watermark
    assert mgr.can_append("a", 5 * 16) and not mgr.can_append("a", 5 * 16 + 1)


def test_asking_for_more_blocks_than_exist_names_the_sequence_and_changes_nothing():
    mgr = new_manager(4, 4)
    mgr.allocate("a", 8)
    with pytest.raises(OutOfBlocksError, match=r"needs 3 blocks for 9 tokens, 2 free .*sequence 'b'"):
        mgr.allocate("b", 9)
    assert "b" not in mgr and mgr.stats()["blocks_free"] == 2
    with pytest.raises(OutOfBlocksError, match="sequence 'a'") as err:
        mgr.append_slots("a", 9)
    assert err.value.seq_id == "a" and mgr.num_slots("a") == 8
    mgr.check_invariants()


def test_append_slots_are_flat_and_cross_block_boundaries():
    mgr = new_manager(8, 4)
    mgr.allocate("a", 3)
    (b0,) = mgr.block_table("a")
    assert mgr.slot_mapping("a", 0, 3) == [b0 * 4, b0 * 4 + 1, b0 * 4 + 2]
    slots = mgr.append_slots("a", 3)
    b1 = mgr.block_table("a")[1]
    assert slots == [b0 * 4 + 3, b1 * 4, b1 * 4 + 1]
    assert mgr.num_slots("a") == 6 and mgr.slot_positions("a") == list(range(6))


def test_bad_calls_raise_named_errors():
    mgr = new_manager(8, 4)
    mgr.allocate("a", 4)
    with pytest.raises(SequenceStateError, match="already allocated"):
        mgr.allocate("a", 4)
    with pytest.raises(UnknownSequenceError, match="sequence 'zz'"):
        mgr.append_slots("zz")
    with pytest.raises(SequenceStateError, match=r"slot range \[2, 9\)"):
        mgr.slot_mapping("a", 2, 9)
    mgr.free("a")
    with pytest.raises(DoubleFreeError, match="sequence 'a'"):
        mgr.free("a")
    mgr.check_invariants()


def test_fork_then_write_copies_the_shared_block_once():
    cache = ShadowCache(8, 4)
    mgr = cache.mgr
    cache.tokens["p"] = [5, 6, 7, 8, 9, 10]
    mgr.allocate("p", 6)
    cache.write("p", mgr.slot_mapping("p", 0, 6), list(range(6)))
    cache.tokens["c"] = list(cache.tokens["p"])
    mgr.fork("p", "c", token_ids=cache.tokens["c"])
    assert mgr.block_table("c") == mgr.block_table("p")
    shared_last = mgr.block_table("p")[1]
    cache.tokens["c"].append(77)
    cache.write("c", mgr.append_slots("c"), [6])
    copies = mgr.stats()["cow_copies"]
    assert copies == 1 and mgr.block_table("c")[1] != shared_last
    assert mgr.block_table("c")[0] == mgr.block_table("p")[0]  # the full block is still shared
    cache.tokens["p"].append(66)
    cache.write("p", mgr.append_slots("p"), [6])  # p holds its block alone now: no copy
    assert mgr.stats()["cow_copies"] == 1 and mgr.block_table("p")[1] == shared_last
    cache.verify("p", set(range(7)))
    cache.verify("c", set(range(7)))
    mgr.check_invariants()


def test_writing_a_prefix_hit_without_a_copy_is_refused():
    mgr = new_manager(8, 4, enable_prefix_caching=True)
    prompt = list(range(9))
    mgr.allocate("a", 9, token_ids=prompt)
    cached = mgr.allocate("b", 9, token_ids=list(prompt))
    assert cached == 8
    mgr.slot_mapping("a", 0, 9)  # a computes the blocks it allocated, even while b shares them
    with pytest.raises(SharedBlockWriteError, match="sequence 'b'") as err:
        mgr.slot_mapping("b", 0, 9)
    assert err.value.block_ids == mgr.block_table("b")[:2]
    mgr.slot_mapping("b", cached, 9)  # the part b computes is its own


def test_copy_log_orders_cow_before_the_write_and_can_be_off():
    mgr = new_manager(8, 4)
    mgr.allocate("p", 2)
    mgr.fork("p", "c")
    mgr.append_slots("c")
    (copy,) = mgr.take_pending_copies()
    assert copy.kind == DEVICE and copy.num_slots == 4
    assert copy.src_slot == mgr.block_table("p")[0] * 4 and copy.dst_slot == mgr.block_table("c")[0] * 4
    assert mgr.take_pending_copies() == []
    quiet = KVCacheManager(8, 4, watermark=0, record_copies=False)
    quiet.allocate("p", 2)
    quiet.fork("p", "c")
    quiet.append_slots("c")
    assert quiet.take_pending_copies() == [] and quiet.stats()["cow_copies"] == 1


def test_swap_out_and_in_counts_bytes_and_checks_room():
    cache = ShadowCache(7, 4, num_swap_blocks=3)
    mgr = cache.mgr
    cache.tokens["a"] = list(range(10, 20))
    mgr.allocate("a", 10)
    cache.write("a", mgr.slot_mapping("a", 0, 10), list(range(10)))
    mgr.allocate("b", 16)
    with pytest.raises(SwapSpaceError, match=r"needs 4 host blocks, 3 free .*sequence 'b'"):
        mgr.swap_out("b")
    device = mgr.block_table("a")
    pairs = mgr.swap_out("a")
    assert [d for d, _ in pairs] == device and mgr.is_swapped("a")
    assert [c.kind for c in mgr.pool.copies] == [SWAP_OUT] * 3
    with pytest.raises(SequenceStateError, match="swapped out"):
        mgr.append_slots("a")
    mgr.allocate("c", 8)  # takes the blocks a left
    assert not mgr.can_swap_in("a")
    with pytest.raises(OutOfBlocksError, match="swap-in needs 3 device blocks"):
        mgr.swap_in("a")
    mgr.free("c")
    assert mgr.can_swap_in("a")
    mgr.swap_in("a")
    with pytest.raises(SwapSpaceError, match="not swapped out"):
        mgr.swap_in("a")
    assert [c.kind for c in mgr.pool.copies][-3:] == [SWAP_IN] * 3
    cache.verify("a", set(range(10)))  # the bytes came back through the host pool
    s = mgr.stats()
    assert s["swap_out_bytes"] == s["swap_in_bytes"] == 3 * cache.store.block_bytes
    assert cache.swap.bytes_out == cache.swap.bytes_in == 3 * cache.store.block_bytes
    mgr.check_invariants()


def test_freeing_a_swapped_sequence_returns_its_host_blocks():
    mgr = new_manager(4, 4, num_swap_blocks=4)
    mgr.allocate("a", 8)
    mgr.swap_out("a")
    assert mgr.stats()["host_blocks_free"] == 2
    mgr.free("a")
    assert mgr.stats()["host_blocks_free"] == 4 and mgr.stats()["blocks_free"] == 4
    mgr.check_invariants()


def test_stats_account_for_every_block():
    mgr = new_manager(10, 4, enable_prefix_caching=True)
    mgr.allocate("a", 9, token_ids=list(range(9)))
    mgr.free("a")
    mgr.allocate("b", 5)
    s = mgr.stats()
    assert s["blocks_free"] + s["blocks_used"] + s["blocks_cached"] == s["blocks_total"] == 10
    assert (s["blocks_used"], s["blocks_cached"]) == (2, 2)
