"""The device block pool: allocator + prefix cache + copy log, the core the manager builds on.

It owns the three rules every path (append, eviction, swap, fork) must follow alike:
  * take/release go through the allocator, and a released block whose content the prefix cache
    indexes becomes cached (reclaimable LRU) instead of free;
  * before a sequence writes into one of its blocks, `make_writable` copies the block if anyone
    else holds it (copy-on-write, logged as a DEVICE copy) and un-indexes it from the prefix
    cache if its content is about to change;
  * every byte movement is appended, in order, to the copy log.
Plain Python, O(1) per block.
"""

from __future__ import annotations

from kvcache.allocator import BlockAllocator
from kvcache.block_table import BlockTable
from kvcache.copy_ops import DEVICE, KVCopy
from kvcache.prefix_cache import PrefixCache


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool,
                 prefix_id_block_size: int, record_copies: bool, publish_on_write: bool = False):
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks, on_reclaim=self._on_reclaim)
        self.prefix = PrefixCache(num_blocks, block_size, prefix_id_block_size) if enable_prefix_caching else None
        self.record_copies = record_copies
        self.publish_on_write = publish_on_write
        self.copies: list[KVCopy] = []
        # which sequence took each block fresh: it may write the block's first content even
        # while prefix hits already share it (they share it to read exactly that content)
        self.taken_by: list[object] = [None] * num_blocks
        self.num_cow_copies = 0
        self.num_slot_moves = 0  # tokens moved into holes by compaction
        self.num_cached_evictions = 0  # cached blocks reclaimed for reuse

    def _on_reclaim(self, block_id: int) -> None:
        if self.prefix is not None and self.prefix.forget(block_id):
            self.num_cached_evictions += 1

    # ---- blocks -------------------------------------------------------------------------------
    def take(self, seq_id: object) -> int:
        block_id = self.allocator.allocate(seq_id)
        self.taken_by[block_id] = seq_id
        return block_id

    def hold(self, block_id: int) -> None:
        """One more holder of a block found in the prefix cache (cached or in use)."""
        if self.allocator.is_cached(block_id):
            self.allocator.revive(block_id)
        else:
            self.allocator.share(block_id)

    def release(self, block_id: int, seq_id: object) -> None:
        keep = self.prefix is not None and block_id in self.prefix
        self.allocator.release(block_id, keep, seq_id)

    def take_many(self, count: int, seq_id: object) -> list[int]:
        blocks = self.allocator.allocate_many(count, seq_id)
        taken_by = self.taken_by
        for block_id in blocks:
            taken_by[block_id] = seq_id
        return blocks

    def release_all(self, blocks: list[int], seq_id: object) -> None:
        """Release a sequence's blocks last first, so a chain's tail is reclaimed before its head."""
        indexed = None if self.prefix is None else self.prefix.hash_of_block
        self.allocator.release_many(reversed(blocks), indexed, seq_id)

    def is_shared(self, block_id: int) -> bool:
        return self.allocator.refcounts[block_id] > 1

    def is_own(self, block_id: int, seq_id: object) -> bool:
        """May seq_id write this block without a copy?"""
        return self.allocator.refcounts[block_id] == 1 or self.taken_by[block_id] == seq_id

    # ---- writes -------------------------------------------------------------------------------
    def make_writable(self, table: BlockTable, index: int) -> int:
        """Make logical block `index` of the table safe to write; returns its physical id.

        Shared -> copy-on-write into a fresh block (the caller has checked there is one);
        indexed by the prefix cache -> dropped from it (its content is about to change).
        """
        block_id = table.blocks[index]
        if self.allocator.refcounts[block_id] > 1:
            new_id = self.take(table.seq_id)
            self.allocator.release(block_id, False, table.seq_id)  # still held by the others
            table.blocks[index] = new_id
            size = self.block_size
            self.log(KVCopy(DEVICE, block_id * size, new_id * size, size))
            self.num_cow_copies += 1
            return new_id
        if self.prefix is not None and self.prefix.hash_of_block[block_id] is not None:
            self.prefix.forget(block_id)
        return block_id

    def log(self, copy: KVCopy) -> None:
        if self.record_copies:
            self.copies.append(copy)

    def take_copies(self) -> list[KVCopy]:
        copies, self.copies = self.copies, []
        return copies

    # ---- prefix cache -------------------------------------------------------------------------
    def publish(self, table: BlockTable, upto_slots: int | None = None) -> None:
        """Index the table's full blocks below slot upto_slots (default: all) not yet indexed,
        from the keys made at allocation, then from its token list (token mode)."""
        if self.prefix is None:
            return
        size = self.block_size
        full = (table.num_slots if upto_slots is None else min(upto_slots, table.num_slots)) // size
        first = table.num_hashed_blocks
        if full <= first:
            return
        pending = table.pending_keys
        if pending:
            count = min(len(pending), full - first)
            self.prefix.register_all(table.blocks[first:first + count], pending[:count])
            table.last_hash = pending[count - 1][0]
            del pending[:count]
            first += count
        if table.token_ids is not None and first < full:
            count = min(full, len(table.token_ids) // size) - first
            if count > 0:
                keys = self.prefix.token_keys(table.token_ids, first, count, table.last_hash, table.extra_key)
                self.prefix.register_all(table.blocks[first:first + count], keys)
                table.last_hash = keys[-1][0]
                first += count
        table.num_hashed_blocks = first
