"""Growing a sequence: flat slots for its next tokens, holes first, then the tail.

Holes left by token eviction are refilled lowest slot first (see token_eviction), then the
last block fills and new blocks are taken. A block the sequence shares is copied before the
first write into it (BlockPool.make_writable), and blocks that fill are published to the prefix
cache when the sequence's tokens are known (with publish_on_write, one append later: by then the
step that wrote them has run). Two fast paths serve decode, one token a step: into
the sequence's own partly filled last block, or into its lowest hole.
"""

from __future__ import annotations

import heapq

from kvcache.block_pool import BlockPool
from kvcache.block_table import BlockTable
from kvcache.errors import OutOfBlocksError


def appends_in_place(pool: BlockPool, table: BlockTable | None, num_new_tokens: int) -> bool:
    """One token into the sequence's own, unpublished, partly filled last block?"""
    if table is None or num_new_tokens != 1 or table.holes or table.swapped:
        return False
    if not table.num_slots % table.block_size:
        return False
    block_id = table.blocks[-1]
    return pool.allocator.refcounts[block_id] == 1 and (pool.prefix is None or block_id not in pool.prefix)


def append_cost(pool: BlockPool, table: BlockTable, num_new_tokens: int) -> int:
    """Blocks appending takes: new tail blocks plus copies of shared blocks written."""
    copies = hole_fill_cost(pool, table, num_new_tokens) if table.holes else ()
    tail = num_new_tokens - min(num_new_tokens, len(table.holes))
    if tail <= 0:
        return len(copies)
    size, used = table.block_size, table.num_slots
    cost = len(copies) + (used + tail + size - 1) // size - len(table.blocks)
    last = len(table.blocks) - 1
    if used % size and last not in copies and pool.allocator.refcounts[table.blocks[last]] > 1:
        cost += 1
    return cost


def append(pool: BlockPool, table: BlockTable, num_new_tokens: int) -> list[int]:
    """Flat slots [num_new_tokens] for the next tokens of a running sequence."""
    size, before = table.block_size, table.num_slots
    if num_new_tokens == 1 and table.holes:
        slot = fill_one_hole(pool, table)
        if slot is not None:
            return [slot]
    if appends_in_place(pool, table, num_new_tokens):
        slot = table.blocks[-1] * size + table.num_slots % size
        if table.positions is not None:
            table.positions.append(table.next_position)
        table.num_slots += 1
        table.next_position += 1
        upto = before if pool.publish_on_write else table.num_slots
        if upto // size > table.num_hashed_blocks and (table.token_ids is not None or table.pending_keys):
            pool.publish(table, upto)
        return [slot]
    cost = append_cost(pool, table, num_new_tokens)
    if cost > pool.allocator.num_available:
        raise OutOfBlocksError(f"appending {num_new_tokens} tokens needs {cost} blocks, "
                               f"{pool.allocator.num_available} available", seq_id=table.seq_id,
                               block_ids=table.blocks[-1:])
    slots = fill_holes(pool, table, num_new_tokens) if table.holes else []
    rest = num_new_tokens - len(slots)
    if rest > 0 and table.num_slots % size:
        pool.make_writable(table, len(table.blocks) - 1)
    blocks, positions = table.blocks, table.positions
    while rest > 0:
        offset = table.num_slots % size
        if offset == 0:
            blocks.append(pool.take(table.seq_id))
        count = min(rest, size - offset)
        base = blocks[-1] * size + offset
        slots.extend(range(base, base + count))
        if positions is not None:
            positions.extend(range(table.next_position, table.next_position + count))
        table.num_slots += count
        table.next_position += count
        rest -= count
    if table.token_ids is not None or table.pending_keys:
        pool.publish(table, before if pool.publish_on_write else None)
    return slots


def fill_holes(pool: BlockPool, table: BlockTable, num_tokens: int) -> list[int]:
    """Put the next num_tokens tokens (at most len(holes)) into the lowest holes; flat slots."""
    holes = table.holes
    count = min(num_tokens, len(holes))
    if count == 0:
        return []
    positions, size, out = table.positions, table.block_size, []
    for slot in _lowest(holes, count):
        block_id = pool.make_writable(table, slot // size)
        out.append(block_id * size + slot % size)
        positions[slot] = table.next_position
        table.next_position += 1
        holes.remove(slot)
    return out


def fill_one_hole(pool: BlockPool, table: BlockTable) -> int | None:
    """fill_holes for one token when its hole is in a block the sequence alone holds and the
    prefix cache does not index (the decode fast path); None when that does not hold."""
    slot = min(table.holes)
    size = table.block_size
    block_id = table.blocks[slot // size]
    if pool.allocator.refcounts[block_id] != 1 or (pool.prefix is not None and block_id in pool.prefix):
        return None
    table.holes.remove(slot)
    table.positions[slot] = table.next_position
    table.next_position += 1
    return block_id * size + slot % size


def hole_fill_cost(pool: BlockPool, table: BlockTable, num_tokens: int) -> set[int]:
    """Logical blocks that filling num_tokens holes would copy (shared ones)."""
    count = min(num_tokens, len(table.holes))
    if count == 0:
        return set()
    size = table.block_size
    return {slot // size for slot in _lowest(table.holes, count) if pool.is_shared(table.blocks[slot // size])}


def _lowest(holes: set[int], count: int) -> list[int]:
    if count == 1:
        return [min(holes)]
    return sorted(holes) if count == len(holes) else heapq.nsmallest(count, holes)
