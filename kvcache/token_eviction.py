"""Token-level eviction inside a sequence's blocks: holes, released blocks and compaction.

The attention kernels read a sequence's slots [0, num_slots) densely, with no mask, so at
attention time there must be no hole. Keys are stored after RoPE at their original positions,
so which slot a token sits in does not matter, and the rules are:

1. Evicting a slot makes it a hole (its bytes stay until overwritten, so a shared block is not
   copied yet: the copy happens at the first write, and a block whose every slot is evicted is
   simply released, with no copy at all).
2. A block whose slots are all holes leaves the sequence at once: the last block takes its place
   in the table (no bytes move; its slots are renumbered, and if it was partly filled its unused
   tail becomes holes).
3. The next appended tokens fill holes first, lowest slot first (`kvcache.append`): the decode step
   that evicts one token and appends one needs no copy.
4. Holes beyond `keep_holes` are closed at once by moving the tail token into the lowest hole,
   one slot at a time (a DEVICE copy of one slot), so tail blocks empty and are released.
   Trailing holes just shorten the sequence.

With eviction keeping a sequence at `budget` tokens and keep_holes <= 1, it never holds more
than ceil(budget / block_size) + 1 blocks.

The moves returned are the logical renumberings (src_slot -> dst_slot, composed over the call,
so they apply all at once: `new_meta[dst] = old_meta[src]`); per-slot metadata (attention
scores, positions) follows them. The bytes follow the copy log.
"""

from __future__ import annotations

from collections.abc import Iterable

from kvcache.block_pool import BlockPool
from kvcache.block_table import BlockTable
from kvcache.copy_ops import DEVICE, KVCopy
from kvcache.errors import OutOfBlocksError, SequenceStateError


def evict(pool: BlockPool, table: BlockTable, slots: Iterable[int], keep_holes: int) -> list[tuple[int, int]]:
    """Evict logical slots, release emptied blocks, compact down to keep_holes holes.

    Returns the composed logical moves [(src_slot, dst_slot)], sorted by dst_slot.
    Raises SequenceStateError for a slot out of range, already a hole, or given twice, and
    OutOfBlocksError if the copies compaction may need cannot be had; both before any change.
    """
    slots = list(slots)
    seq_id, size = table.seq_id, table.block_size
    if keep_holes < 0:
        raise SequenceStateError(f"keep_holes must be >= 0, got {keep_holes}", seq_id=seq_id)
    bad = [s for s in slots if not 0 <= s < table.num_slots or s in table.holes]
    if bad or (len(slots) > 1 and len(set(slots)) != len(slots)):
        raise SequenceStateError(
            f"cannot evict slots {sorted(bad)[:8] or 'given twice'}: valid slots are the non-hole "
            f"slots in [0, {table.num_slots})", seq_id=seq_id, block_ids=[table.blocks[s // size] for s in bad
                                                                            if 0 <= s < table.num_slots][:8])
    if not slots and len(table.holes) <= keep_holes:
        return []  # nothing to do (compact() of a dense sequence)
    if len(slots) == 1 and keep_holes > len(table.holes) and _evict_one(pool, table, slots[0]):
        return []
    emptied = _emptied_blocks(table, slots)
    if emptied or len(table.holes) + len(slots) > keep_holes:
        _check_copy_room(pool, table, slots, emptied)
    if slots:
        table.token_ids = table.pending_keys = None  # the slots no longer hold the prefix: stop publishing
    positions = table.materialize_positions()
    for s in slots:
        table.holes.add(s)
        positions[s] = -1
    origin: dict[int, int] = {}  # dst slot -> slot its token came from at the start of the call
    _trim_tail(pool, table)
    for index in sorted(emptied, reverse=True):  # higher first: lower indices stay put
        if index < len(table.blocks):
            _replace_with_last(pool, table, index, origin)
    _compact(pool, table, keep_holes, origin)
    if not origin:
        return []
    return sorted(((src, dst) for dst, src in origin.items() if src != dst), key=lambda m: m[1])


def _evict_one(pool: BlockPool, table: BlockTable, slot: int) -> bool:
    """The decode fast path: one (valid) slot, no compaction and, if its block cannot empty,
    nothing but a new hole; False (nothing changed) otherwise."""
    if len(table.holes) + 1 >= table.block_slots(slot // table.block_size):
        return False
    table.token_ids = table.pending_keys = None
    table.materialize_positions()[slot] = -1
    table.holes.add(slot)
    if slot == table.num_slots - 1:
        _trim_tail(pool, table)
    return True


def _emptied_blocks(table: BlockTable, slots: list[int]) -> set[int]:
    """Logical blocks whose every slot is a hole once these slots are evicted."""
    size, holes = table.block_size, table.holes
    evicted_per_block: dict[int, int] = {}
    for s in slots:
        evicted_per_block[s // size] = evicted_per_block.get(s // size, 0) + 1
    emptied = set()
    for index, count in evicted_per_block.items():
        in_use = table.block_slots(index)
        if count + len(holes) < in_use:
            continue  # not enough holes anywhere to empty it
        start = index * size
        if count + sum(1 for h in range(start, start + in_use) if h in holes) == in_use:
            emptied.add(index)
    return emptied


def _check_copy_room(pool: BlockPool, table: BlockTable, slots: list[int], emptied: set[int]) -> None:
    """Raise before any change if compaction might need more block copies than there is room for.

    Only writes copy: moves into holes of shared blocks, and a shared last block whose unused
    tail becomes holes when it replaces an emptied block. The count is an upper bound.
    """
    size = table.block_size
    written = ({s // size for s in slots} | {h // size for h in table.holes}) - emptied
    if emptied:
        written.add(len(table.blocks) - 1)
    shared = sorted(i for i in written if pool.is_shared(table.blocks[i]))
    if len(shared) > pool.allocator.num_available:
        raise OutOfBlocksError(
            f"compaction may copy {len(shared)} shared blocks, {pool.allocator.num_available} available",
            seq_id=table.seq_id, block_ids=[table.blocks[i] for i in shared])


def _record(origin: dict[int, int], src: int, dst: int) -> None:
    origin[dst] = origin.pop(src, src)


def _trim_tail(pool: BlockPool, table: BlockTable) -> None:
    """Drop trailing holes; release the last block when it empties."""
    holes, positions, size = table.holes, table.positions, table.block_size
    while table.num_slots and table.num_slots - 1 in holes:
        table.num_slots -= 1
        holes.remove(table.num_slots)
        positions.pop()
        if table.num_slots % size == 0:
            pool.release(table.blocks.pop(), table.seq_id)


def _replace_with_last(pool: BlockPool, table: BlockTable, index: int, origin: dict[int, int]) -> None:
    """Release all-hole block `index`; the last block takes its place in the table."""
    size, holes, positions = table.block_size, table.holes, table.positions
    last = len(table.blocks) - 1
    if index == last:
        _trim_tail(pool, table)
        return
    freed = table.blocks[index]
    start, last_start = index * size, last * size
    used = table.num_slots - last_start  # slots in use in the last block
    holes.difference_update(range(start, start + size))
    for offset in range(used):
        src, dst = last_start + offset, start + offset
        if src in holes:
            holes.remove(src)
            holes.add(dst)
        else:
            _record(origin, src, dst)
    holes.update(range(start + used, start + size))
    positions[start:start + size] = positions[last_start:] + [-1] * (size - used)
    del positions[last_start:]
    table.blocks[index] = table.blocks.pop()
    table.num_slots = last_start
    pool.release(freed, table.seq_id)
    _trim_tail(pool, table)


def _compact(pool: BlockPool, table: BlockTable, keep_holes: int, origin: dict[int, int]) -> None:
    """Move tail tokens into the lowest holes until at most keep_holes remain."""
    holes, positions, size = table.holes, table.positions, table.block_size
    if len(holes) <= keep_holes:
        return
    for dst in sorted(holes):
        if len(holes) <= keep_holes:
            break
        if dst not in holes:  # trimmed off the tail meanwhile
            continue
        src = table.num_slots - 1  # a token: trailing holes are always trimmed
        dst_block = pool.make_writable(table, dst // size)
        pool.log(KVCopy(DEVICE, table.flat_slot(src), dst_block * size + dst % size, 1))
        pool.num_slot_moves += 1
        positions[dst] = positions[src]
        holes.remove(dst)
        _record(origin, src, dst)
        table.num_slots = src
        positions.pop()
        if src % size == 0:
            pool.release(table.blocks.pop(), table.seq_id)
        _trim_tail(pool, table)
