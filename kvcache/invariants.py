"""Whole-manager invariant checks, for tests and debugging (O(blocks + tokens), not for the hot path).

free + used + cached == total; every refcount equals the number of tables holding the block;
no block is twice in, or in two of, the free lists; every cached block is indexed by the prefix
cache and every indexed block is in use or cached; every table is self-consistent.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvcache.manager import KVCacheManager


def check_manager(manager: "KVCacheManager") -> None:
    pool, alloc = manager.pool, manager.pool.allocator
    alloc.check()
    manager.swap.host.check()
    device_holders: Counter[int] = Counter()
    host_holders: Counter[int] = Counter()
    for table in manager._tables.values():
        table.check()
        (host_holders if table.swapped else device_holders).update(table.blocks)
    for block_id in range(alloc.num_blocks):
        assert alloc.refcounts[block_id] == device_holders[block_id], (
            f"block {block_id}: refcount {alloc.refcounts[block_id]} but {device_holders[block_id]} holders")
    for block_id in range(manager.swap.host.num_blocks):
        assert manager.swap.host.refcounts[block_id] == host_holders[block_id], f"host block {block_id}"
    prefix = pool.prefix
    if prefix is None:
        assert alloc.num_cached == 0
        return
    prefix.check()
    for block_id in range(alloc.num_blocks):
        if alloc.is_cached(block_id):
            assert block_id in prefix, f"cached block {block_id} is not indexed"
        elif block_id in prefix:
            assert alloc.refcounts[block_id] > 0, f"indexed block {block_id} is free"
