"""KVCacheManager: the paged KV cache bookkeeping the scheduler and the backends call.

Plain Python (no torch): the analytic backend uses it for counts, the compute backend uses the
same block ids to index `PagedKVStore`. Sequences are tracked by any hashable id. Every action
has a predicate (`can_*`) and checks before it changes anything; a bad call raises a named
`kvcache.errors` exception carrying the sequence and block ids.

Step order for a caller (scheduler + backend), every engine step:
  1. admit:    if can_allocate(n, token_ids=...): cached = allocate(seq, n, token_ids=...)
               -> compute tokens [cached, n); their slots: slot_mapping(seq, cached, n)
               (a prefix hit never covers the last prompt token: cached <= n - 1).
               Full blocks are published to the prefix cache when allocated, which suits the
               analytic backend and a prompt computed in the step that allocates it. With
               chunked prefill on the compute backend build the manager with
               publish_on_write=True: a block is then published when slot_mapping hands out
               its last slot (the backend writes it in the step then running) or, for blocks
               that fill during decode, at the sequence's next append_slots.
  2. grow:     for each decoding sequence: if can_append(seq, k): slots = append_slots(seq, k)
               (holes left by eviction are filled first; a shared block is copied first)
               else preempt someone: free(seq) (recompute) or swap_out(seq) (swap)
  3. resume:   if can_swap_in(seq): swap_in(seq)
  4. copy:     copies = take_pending_copies(); the compute backend applies them, in order,
               with kvcache.copy_exec.apply_copies(copies, store, swap_pool) BEFORE writing the
               step's K/V (copy-on-write, compaction moves and swaps all live in this one log)
  5. run:      write K/V at the slots from 1-2, attend over block_table(seq), num_slots(seq)
  6. evict:    after the step, a policy may evict: moves = evict_tokens(seq, slots, keep_holes=k)
               with k = tokens the sequence appends before its next attention (1 in decode, 0
               otherwise); apply `moves` to per-slot metadata (scores); the bytes follow in the
               copy log at the next step 4. Before any attention num_holes(seq) must be 0
               (compact(seq) forces it).
  7. finish:   free(seq)
Blocks of a finished sequence stay in the prefix cache until reclaimed, least recently released
first. All operations are O(1) per block; eviction and compaction are O(1) per moved token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from kvcache.block_pool import BlockPool
from kvcache.block_table import BlockTable
from kvcache.copy_ops import KVCopy
from kvcache.errors import (DoubleFreeError, OutOfBlocksError, SequenceStateError,
                            SharedBlockWriteError, UnknownSequenceError)
from kvcache.prefix_cache import BlockKey
from kvcache.swap_space import SwapSpace
from kvcache.append import append, append_cost, appends_in_place
from kvcache.token_eviction import evict


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, *, watermark: float = 0.01,
                 enable_prefix_caching: bool = False, num_swap_blocks: int = 0, block_bytes: int = 0,
                 prefix_id_block_size: int = 512, record_copies: bool = True,
                 publish_on_write: bool = False):
        """num_blocks device blocks of block_size tokens. watermark: fraction of blocks that
        admission (can_allocate, can_swap_in) keeps free for running sequences to grow into.
        num_swap_blocks: host swap pool capacity. block_bytes: bytes of one block over all
        layers (`kvcache.sizing.kv_bytes_per_block`), to count swap traffic. prefix_id_block_size:
        tokens per trace prefix id (Mooncake: 512). record_copies=False drops the copy log
        (analytic backend). publish_on_write: publish a full block to the prefix cache only once
        its bytes are written (see the step order), for the compute backend."""
        if not 0.0 <= watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {watermark}")
        self.block_size = block_size
        self.block_bytes = block_bytes
        self.watermark_blocks = int(watermark * num_blocks)
        self.pool = BlockPool(num_blocks, block_size, enable_prefix_caching=enable_prefix_caching,
                              prefix_id_block_size=prefix_id_block_size, record_copies=record_copies,
                              publish_on_write=publish_on_write)
        self.swap = SwapSpace(num_swap_blocks, block_bytes)
        self._tables: dict[object, BlockTable] = {}
        self._counts = dict.fromkeys(("prefix_query_blocks", "prefix_hit_blocks", "prefix_hit_tokens"), 0)

    @property
    def num_blocks(self) -> int:
        return self.pool.allocator.num_blocks

    @property
    def num_available_blocks(self) -> int:
        """Blocks free or cached (reclaimable)."""
        return self.pool.allocator.num_available

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._tables

    def _table(self, seq_id: object, *, running: bool = True) -> BlockTable:
        table = self._tables.get(seq_id)
        if table is None:
            raise UnknownSequenceError("unknown sequence", seq_id=seq_id)
        if running and table.swapped:
            raise SequenceStateError("sequence is swapped out; swap_in first", seq_id=seq_id)
        return table

    # ---- admission ----------------------------------------------------------------------------
    def _prefix_plan(self, num_tokens: int, token_ids: Sequence[int] | None,
                     prefix_block_ids: Sequence[int] | None, extra_key: object
                     ) -> tuple[list[tuple[int, BlockKey]], list[int]]:
        """Keys of the prompt's full blocks and the cached blocks of its longest hit."""
        prefix = self.pool.prefix
        if prefix is None or (token_ids is None and prefix_block_ids is None):
            return [], []
        if token_ids is not None:
            keys = prefix.token_keys(token_ids, 0, min(num_tokens, len(token_ids)) // self.block_size,
                                     None, extra_key)
        else:
            keys = prefix.id_keys(prefix_block_ids, prefix.num_id_blocks(num_tokens, len(prefix_block_ids)),
                                  extra_key)
        # the last prompt token is always computed (its logits start the decode)
        return keys, prefix.match(keys[:max(num_tokens - 1, 0) // self.block_size])

    def _blocks_needed(self, num_tokens: int, hits: list[int]) -> int:
        """Blocks an allocation takes from the free + cached pool (a hit on a cached block too)."""
        is_cached = self.pool.allocator.is_cached
        return -(-num_tokens // self.block_size) - len(hits) + sum(1 for b in hits if is_cached(b))

    def cached_prefix_tokens(self, num_tokens: int, token_ids: Sequence[int] | None = None,
                             prefix_block_ids: Sequence[int] | None = None, extra_key: object = None) -> int:
        """Tokens of a prompt of num_tokens the prefix cache holds now (no change, no counters)."""
        return len(self._prefix_plan(num_tokens, token_ids, prefix_block_ids, extra_key)[1]) * self.block_size

    def can_allocate(self, num_tokens: int, token_ids: Sequence[int] | None = None,
                     prefix_block_ids: Sequence[int] | None = None, extra_key: object = None) -> bool:
        """Would allocate() fit and leave the watermark free?"""
        _, hits = self._prefix_plan(num_tokens, token_ids, prefix_block_ids, extra_key)
        return self.num_available_blocks - self._blocks_needed(num_tokens, hits) >= self.watermark_blocks

    def allocate(self, seq_id: object, num_tokens: int, token_ids: Sequence[int] | None = None,
                 prefix_block_ids: Sequence[int] | None = None, extra_key: object = None) -> int:
        """Blocks for slots [0, num_tokens); returns num_cached_tokens (a multiple of block_size).

        token_ids: the prompt (the manager keeps a reference and reads later tokens from it to
        key blocks that fill during decode: pass the sequence's growing token list). Or
        prefix_block_ids: a trace's prefix block ids (`prefix_id_block_size` tokens each).
        The caller computes tokens [num_cached_tokens, num_tokens). The watermark is not checked
        here (see can_allocate); OutOfBlocksError if the blocks do not exist.
        """
        if seq_id in self._tables:
            raise SequenceStateError("sequence is already allocated", seq_id=seq_id)
        if num_tokens < 0:
            raise SequenceStateError(f"num_tokens must be >= 0, got {num_tokens}", seq_id=seq_id)
        pool = self.pool
        keys, hits = self._prefix_plan(num_tokens, token_ids, prefix_block_ids, extra_key)
        needed = self._blocks_needed(num_tokens, hits)
        if needed > pool.allocator.num_available:
            raise OutOfBlocksError(f"needs {needed} blocks for {num_tokens} tokens, "
                                   f"{pool.allocator.num_available} free or cached of {self.num_blocks}",
                                   seq_id=seq_id)
        table = BlockTable(seq_id, self.block_size, num_slots=num_tokens, next_position=num_tokens,
                           num_cached_tokens=len(hits) * self.block_size, extra_key=extra_key)
        for block_id in hits:  # before any take(), so no hit is reclaimed under us
            pool.hold(block_id)
        table.blocks = hits + pool.take_many(-(-num_tokens // self.block_size) - len(hits), seq_id)
        if pool.prefix is not None and keys:
            table.num_hashed_blocks, table.pending_keys = len(hits), keys[len(hits):]
            table.last_hash = keys[len(hits) - 1][0] if hits else None
            if not pool.publish_on_write:
                pool.publish(table)
        if pool.prefix is not None and (token_ids is not None or prefix_block_ids is not None):
            self._counts["prefix_query_blocks"] += len(table.blocks)
            self._counts["prefix_hit_blocks"] += len(hits)
            self._counts["prefix_hit_tokens"] += table.num_cached_tokens
        table.token_ids = token_ids if pool.prefix is not None else None
        self._tables[seq_id] = table
        return table.num_cached_tokens

    # ---- growth -------------------------------------------------------------------------------
    def can_append(self, seq_id: object, num_new_tokens: int = 1) -> bool:
        """Can the sequence take num_new_tokens more tokens (new blocks and copies)?"""
        table = self._tables.get(seq_id)
        if appends_in_place(self.pool, table, num_new_tokens):
            return True
        return append_cost(self.pool, self._table(seq_id), num_new_tokens) <= self.pool.allocator.num_available

    def append_slots(self, seq_id: object, num_new_tokens: int = 1) -> list[int]:
        """Flat slots [num_new_tokens] for the next tokens: holes first, then the tail.
        OutOfBlocksError (nothing changed) if new blocks or copies cannot be had."""
        table = self._tables.get(seq_id)
        if table is None or table.swapped:
            table = self._table(seq_id)  # raises the right error
        return append(self.pool, table, num_new_tokens)

    def slot_mapping(self, seq_id: object, start: int, end: int) -> list[int]:
        """Flat slots of logical slots [start, end), to write a prefill chunk there.

        SharedBlockWriteError if a slot lies in a block that another sequence holds and this
        one did not allocate (a prefix hit, or a block inherited by fork).
        """
        table = self._table(seq_id)
        if not 0 <= start <= end <= table.num_slots:
            raise SequenceStateError(f"slot range [{start}, {end}) outside [0, {table.num_slots})",
                                     seq_id=seq_id)
        size = self.block_size
        foreign = [b for b in table.blocks[start // size:-(-end // size)] if not self.pool.is_own(b, seq_id)]
        if foreign:
            raise SharedBlockWriteError(f"writing slots [{start}, {end}) would change blocks other "
                                        "sequences read; append_slots copies them first",
                                        seq_id=seq_id, block_ids=foreign)
        if self.pool.publish_on_write and (table.token_ids is not None or table.pending_keys):
            self.pool.publish(table, end)  # written in the step now running: findable next step
        return table.flat_slots(start, end)

    # ---- token eviction -----------------------------------------------------------------------
    def evict_tokens(self, seq_id: object, logical_slots: Iterable[int], *,
                     keep_holes: int = 0) -> list[tuple[int, int]]:
        """Evict tokens at these logical slots; returns logical moves [(src_slot, dst_slot)].

        Emptied blocks return to the pool; holes beyond keep_holes are closed by moving tail
        tokens into them (see kvcache.token_eviction). Apply moves to per-slot metadata at once:
        new[dst] = old[src]. slot_positions(seq) is already updated.
        """
        return evict(self.pool, self._table(seq_id), logical_slots, keep_holes)

    def compact(self, seq_id: object) -> list[tuple[int, int]]:
        """Close every hole (moves as in evict_tokens)."""
        return self.evict_tokens(seq_id, (), keep_holes=0)

    # ---- lifetime -----------------------------------------------------------------------------
    def free(self, seq_id: object) -> None:
        """Release a finished or preempted sequence (device or host blocks)."""
        table = self._tables.pop(seq_id, None)
        if table is None:
            raise DoubleFreeError("free of a sequence that is not allocated (freed twice?)", seq_id=seq_id)
        if table.swapped:
            self.swap.host.release_many(table.blocks, None, seq_id)
        else:
            self.pool.release_all(table.blocks, seq_id)

    def fork(self, parent_id: object, child_id: object, token_ids: Sequence[int] | None = None) -> None:
        """The child shares all the parent's blocks; the first write into one copies it.
        token_ids: the child's own token list, to key its blocks that fill later."""
        parent = self._table(parent_id)
        if child_id in self._tables:
            raise SequenceStateError("fork target is already allocated", seq_id=child_id)
        for block_id in parent.blocks:
            self.pool.allocator.share(block_id)
        self._tables[child_id] = parent.copy_for_fork(child_id, token_ids)

    # ---- swap ---------------------------------------------------------------------------------
    def can_swap_out(self, seq_id: object) -> bool:
        return len(self._table(seq_id).blocks) <= self.swap.host.num_free

    def swap_out(self, seq_id: object) -> list[tuple[int, int]]:
        """Copy the sequence's blocks to the host pool and release them; (device, host) pairs.
        SwapSpaceError if the host pool lacks room."""
        return self.swap.swap_out(self.pool, self._table(seq_id))

    def can_swap_in(self, seq_id: object) -> bool:
        """Would swap_in fit and leave the watermark free?"""
        table = self._table(seq_id, running=False)
        return table.swapped and self.num_available_blocks - len(table.blocks) >= self.watermark_blocks

    def swap_in(self, seq_id: object) -> list[tuple[int, int]]:
        """Copy the sequence's blocks back to fresh device blocks; (device, host) pairs.
        OutOfBlocksError if the device lacks room (the watermark is not checked here)."""
        return self.swap.swap_in(self.pool, self._table(seq_id, running=False))

    # ---- views --------------------------------------------------------------------------------
    def take_pending_copies(self) -> list[KVCopy]:
        """The copies logged since the last call, in the order they must run (see copy_ops)."""
        return self.pool.take_copies()

    def block_table(self, seq_id: object) -> list[int]:
        """Physical block ids of the sequence, logical order (host ids while swapped out)."""
        return list(self._table(seq_id, running=False).blocks)

    def num_slots(self, seq_id: object) -> int:
        """Logical slots in use, holes included: what attention reads once num_holes is 0."""
        return self._table(seq_id, running=False).num_slots

    def num_holes(self, seq_id: object) -> int:
        return len(self._table(seq_id, running=False).holes)

    def num_tokens(self, seq_id: object) -> int:
        """Tokens held (slots that are not holes)."""
        return self._table(seq_id, running=False).num_tokens

    def slot_positions(self, seq_id: object) -> list[int]:
        """[num_slots] original token position in each logical slot, -1 for a hole."""
        return self._table(seq_id, running=False).slot_positions()

    def is_swapped(self, seq_id: object) -> bool:
        return self._table(seq_id, running=False).swapped

    def seq_ids(self) -> list[object]:
        return list(self._tables)

    def stats(self) -> dict[str, int | float]:
        """Counters, all cumulative except the block and sequence counts:
        blocks_total/free/used/cached (free + used + cached == total), num_seqs,
        prefix_query_blocks (blocks of prompts looked up), prefix_hit_blocks/_tokens,
        prefix_miss_blocks, prefix_hit_rate (hit / query blocks), cached_block_evictions
        (cached blocks reclaimed), cow_copies, slot_moves (compaction), swap_out/in_blocks,
        swap_out/in_bytes (blocks * block_bytes), host_blocks_total/free."""
        alloc, pool = self.pool.allocator, self.pool
        out: dict[str, int | float] = {
            "blocks_total": alloc.num_blocks, "blocks_free": alloc.num_free,
            "blocks_used": alloc.num_used, "blocks_cached": alloc.num_cached,
            "num_seqs": len(self._tables), **self._counts, **self.swap.counts,
            "prefix_miss_blocks": self._counts["prefix_query_blocks"] - self._counts["prefix_hit_blocks"],
            "cached_block_evictions": pool.num_cached_evictions, "cow_copies": pool.num_cow_copies,
            "slot_moves": pool.num_slot_moves,
            "host_blocks_total": self.swap.host.num_blocks, "host_blocks_free": self.swap.host.num_free,
        }
        queried = out["prefix_query_blocks"]
        out["prefix_hit_rate"] = out["prefix_hit_blocks"] / queried if queried else 0.0
        return out

    def check_invariants(self) -> None:
        """Assert every bookkeeping invariant (O(total blocks + tokens); for tests)."""
        from kvcache.invariants import check_manager

        check_manager(self)
