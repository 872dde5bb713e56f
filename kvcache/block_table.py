"""One sequence's block table: logical slots -> physical blocks, plus what each slot holds.

Logical slot i of a sequence lives in physical block `blocks[i // block_size]` at offset
`i % block_size`; its flat slot (what the cache write and the kernels index) is
`blocks[i // block_size] * block_size + i % block_size`.

Slots [0, num_slots) are in use. Each holds a token, or is a hole: a token evicted and not yet
refilled. `positions[i]` is the original token position stored in slot i (-1 for a hole); it is
None while no token was ever evicted, meaning slot i holds position i, so sequences without
eviction carry no per-token list. Plain data; the manager and `token_eviction` change it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class BlockTable:
    seq_id: object
    block_size: int
    blocks: list[int] = field(default_factory=list)  # logical block -> physical id (host id if swapped)
    num_slots: int = 0  # logical slots in use, holes included
    next_position: int = 0  # original position of the next appended token
    holes: set[int] = field(default_factory=set)  # evicted logical slots, not yet refilled
    positions: list[int] | None = None  # [num_slots] original position per slot, -1 = hole
    swapped: bool = False
    num_cached_tokens: int = 0  # prefix-cache hit at allocation
    # prefix-cache publishing: the next full block to publish is `num_hashed_blocks`, chained on
    # `last_hash`; its key is the head of `pending_keys` (keys made at allocation, not yet
    # published) or else comes from token_ids; both are None once the slots stop matching the
    # token prefix (eviction)
    token_ids: Sequence[int] | None = None
    extra_key: object = None
    num_hashed_blocks: int = 0
    last_hash: int | None = None
    pending_keys: list | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens held (slots that are not holes)."""
        return self.num_slots - len(self.holes)

    def flat_slot(self, slot: int) -> int:
        size = self.block_size
        return self.blocks[slot // size] * size + slot % size

    def flat_slots(self, start: int, end: int) -> list[int]:
        """Flat slots of logical slots [start, end), built one block at a time."""
        size, out = self.block_size, []
        while start < end:
            index, offset = divmod(start, size)
            count = min(end - start, size - offset)
            base = self.blocks[index] * size + offset
            out.extend(range(base, base + count))
            start += count
        return out

    def slot_positions(self) -> list[int]:
        """[num_slots] original token position of each slot, -1 for a hole."""
        return list(range(self.num_slots)) if self.positions is None else list(self.positions)

    def materialize_positions(self) -> list[int]:
        if self.positions is None:
            self.positions = list(range(self.num_slots))
        return self.positions

    def block_slots(self, index: int) -> int:
        """Slots in use in logical block `index` (block_size except maybe for the last)."""
        return min(self.block_size, self.num_slots - index * self.block_size)

    def copy_for_fork(self, child_id: object, token_ids: Sequence[int] | None) -> "BlockTable":
        return BlockTable(
            seq_id=child_id, block_size=self.block_size, blocks=list(self.blocks),
            num_slots=self.num_slots, next_position=self.next_position, holes=set(self.holes),
            positions=None if self.positions is None else list(self.positions),
            num_cached_tokens=self.num_cached_tokens,
            token_ids=token_ids if self.token_ids is not None else None, extra_key=self.extra_key,
            num_hashed_blocks=self.num_hashed_blocks, last_hash=self.last_hash,
            pending_keys=None if self.pending_keys is None else list(self.pending_keys))

    def check(self) -> None:
        """Assert the table's own invariants (for tests)."""
        size = self.block_size
        assert len(self.blocks) == -(-self.num_slots // size), "blocks do not cover the slots"
        assert all(0 <= h < self.num_slots for h in self.holes), "a hole past the end"
        assert self.num_slots - 1 not in self.holes, "a trailing hole was not trimmed"
        if self.positions is not None:
            assert len(self.positions) == self.num_slots
            assert all((p < 0) == (i in self.holes) for i, p in enumerate(self.positions))
            valid = [p for p in self.positions if p >= 0]
            assert len(set(valid)) == len(valid), "a position stored twice"
        else:
            assert not self.holes
        for index in range(len(self.blocks)):
            start = index * size
            in_use = self.block_slots(index)
            assert any(s not in self.holes for s in range(start, start + in_use)), \
                f"logical block {index} holds only holes but was not released"
