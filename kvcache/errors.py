"""Named exceptions of the KV cache manager.

Every error says what was wrong and where: the sequence id and the block ids involved are part
of the message and kept as attributes (`seq_id`, `block_ids`), so a caller can recover or a test
can check exactly which request broke the rule. A bad call never corrupts the manager: every
action checks before it mutates.
"""

from __future__ import annotations

from collections.abc import Iterable


class KVCacheError(Exception):
    """Base of every KV cache bookkeeping error."""

    def __init__(self, message: str, *, seq_id: object = None, block_ids: Iterable[int] = ()):
        self.seq_id = seq_id
        self.block_ids = list(block_ids)
        where = []
        if seq_id is not None:
            where.append(f"sequence {seq_id!r}")
        if self.block_ids:
            shown = self.block_ids[:16]
            more = f" ... (+{len(self.block_ids) - 16})" if len(self.block_ids) > 16 else ""
            where.append(f"blocks {shown}{more}")
        super().__init__(f"{message} [{', '.join(where)}]" if where else message)


class OutOfBlocksError(KVCacheError):
    """More device blocks were asked for than are free or reclaimable."""


class DoubleFreeError(KVCacheError):
    """A block or a sequence was freed when it was not held."""


class SharedBlockWriteError(KVCacheError):
    """A write would land in a block that another sequence also reads (copy it first)."""


class SwapSpaceError(KVCacheError):
    """The host swap pool has no room, or a sequence is not in the swap state asked for."""


class UnknownSequenceError(KVCacheError, KeyError):
    """The sequence id is not tracked by the manager."""

    def __str__(self) -> str:  # KeyError would quote the message
        return Exception.__str__(self)


class SequenceStateError(KVCacheError):
    """The call does not fit the sequence's state (already allocated, swapped out, bad slot)."""
