"""BlockAllocator: free deque, refcounts, LRU of cached blocks, named errors."""

from __future__ import annotations

import pytest

from kvcache.allocator import BlockAllocator
from kvcache.errors import DoubleFreeError, OutOfBlocksError


def test_allocates_every_block_once_then_refuses():
    alloc = BlockAllocator(4)
    blocks = [alloc.allocate("s") for _ in range(4)]
    assert sorted(blocks) == [0, 1, 2, 3] and alloc.num_used == 4
    with pytest.raises(OutOfBlocksError, match="sequence 's'"):
        alloc.allocate("s")
    alloc.check()


def test_refcounts_and_double_free_names_the_block():
    alloc = BlockAllocator(2)
    b = alloc.allocate()
    alloc.share(b)
    alloc.release(b, False)
    assert alloc.refcounts[b] == 1 and alloc.num_free == 1
    alloc.release(b, False)
    with pytest.raises(DoubleFreeError, match=rf"blocks \[{b}\]") as err:
        alloc.release(b, False, seq_id=7)
    assert err.value.block_ids == [b] and err.value.seq_id == 7
    alloc.check()


def test_cached_blocks_are_reclaimed_least_recently_released_first():
    reclaimed = []
    alloc = BlockAllocator(3, on_reclaim=reclaimed.append)
    a, b, c = (alloc.allocate() for _ in range(3))
    alloc.release(b, True)
    alloc.release(a, True)
    alloc.release(c, False)
    assert (alloc.num_free, alloc.num_cached, alloc.num_used) == (1, 2, 0)
    assert alloc.allocate() == c  # a free block before any cached one
    assert alloc.allocate() == b and reclaimed == [b]  # then the oldest cached one
    alloc.revive(a)  # a cache hit takes a back without reclaiming it
    assert alloc.refcounts[a] == 1 and alloc.num_cached == 0 and alloc.num_reclaimed == 1
    alloc.check()


def test_allocate_many_is_all_or_nothing():
    alloc = BlockAllocator(4)
    assert len(alloc.allocate_many(3)) == 3
    with pytest.raises(OutOfBlocksError, match="needs 2 blocks, 1 free"):
        alloc.allocate_many(2, seq_id="x")
    assert alloc.num_free == 1
    alloc.check()
