"""Block allocator: which physical blocks are free, held, or cached-and-reclaimable.

A block is in exactly one of three states:
    used    refcount > 0: held by one or more sequences;
    cached  refcount == 0 but its content is still indexed by the prefix cache; it may be
            revived by a cache hit, or reclaimed (least recently released first) when the free
            list runs dry;
    free    refcount == 0 and no content anyone can find.
`num_free + num_cached + num_used == num_blocks` always. Every operation is O(1): a deque of
free ids, a list of refcounts, and an OrderedDict as the LRU of cached blocks (its insertion
order is the release order, so ties cannot occur). No torch here: the same ids index the
physical tensors of the compute backend and nothing at all in the analytic backend.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence

from kvcache.errors import DoubleFreeError, OutOfBlocksError


class BlockAllocator:
    """Free deque + reference counts + LRU of cached blocks over ids [0, num_blocks)."""

    def __init__(self, num_blocks: int, on_reclaim: Callable[[int], None] | None = None):
        """on_reclaim(block_id) is called when a cached block is reclaimed for reuse, so the
        prefix cache can drop its entry."""
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        self.num_blocks = num_blocks
        self.refcounts = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._cached: OrderedDict[int, None] = OrderedDict()
        self.on_reclaim = on_reclaim
        self.num_reclaimed = 0  # cached blocks taken back for reuse

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    @property
    def num_available(self) -> int:
        """Blocks an allocation may take: free first, then cached (LRU)."""
        return len(self._free) + len(self._cached)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free) - len(self._cached)

    def is_cached(self, block_id: int) -> bool:
        return block_id in self._cached

    def allocate(self, seq_id: object = None) -> int:
        """Take a block (refcount 1): a free one, else the least recently released cached one."""
        if self._free:
            block_id = self._free.popleft()
        elif self._cached:
            block_id, _ = self._cached.popitem(last=False)
            self.num_reclaimed += 1
            if self.on_reclaim is not None:
                self.on_reclaim(block_id)
        else:
            raise OutOfBlocksError(f"no free or cached block left of {self.num_blocks}", seq_id=seq_id)
        self.refcounts[block_id] = 1
        return block_id

    def allocate_many(self, count: int, seq_id: object = None) -> list[int]:
        """allocate() count times, all or nothing."""
        if count > self.num_available:
            raise OutOfBlocksError(f"needs {count} blocks, {self.num_available} free or cached of "
                                   f"{self.num_blocks}", seq_id=seq_id)
        free = self._free
        if count > len(free):
            return [self.allocate(seq_id) for _ in range(count)]
        blocks = [free.popleft() for _ in range(count)]
        refcounts = self.refcounts
        for block_id in blocks:
            refcounts[block_id] = 1
        return blocks

    def share(self, block_id: int) -> None:
        """One more holder of a used block."""
        if self.refcounts[block_id] <= 0:
            raise DoubleFreeError("cannot share a block nobody holds", block_ids=[block_id])
        self.refcounts[block_id] += 1

    def revive(self, block_id: int) -> None:
        """A cache hit on a cached block: it leaves the LRU and is held once."""
        del self._cached[block_id]
        self.refcounts[block_id] = 1

    def release(self, block_id: int, keep_cached: bool, seq_id: object = None) -> None:
        """One holder fewer; at zero the block becomes cached (if keep_cached) or free."""
        count = self.refcounts[block_id]
        if count <= 0:
            raise DoubleFreeError("block released but not held", seq_id=seq_id, block_ids=[block_id])
        self.refcounts[block_id] = count - 1
        if count == 1:
            if keep_cached:
                self._cached[block_id] = None
            else:
                self._free.append(block_id)

    def release_many(self, blocks: Iterable[int], keep_cached: Sequence[object] | None,
                     seq_id: object = None) -> None:
        """release() each block in order; a block is kept cached if keep_cached[block_id] is
        not None (the prefix cache's per-block hash list), else freed."""
        refcounts, free, cached = self.refcounts, self._free, self._cached
        for block_id in blocks:
            count = refcounts[block_id]
            if count <= 0:
                raise DoubleFreeError("block released but not held", seq_id=seq_id, block_ids=[block_id])
            refcounts[block_id] = count - 1
            if count == 1:
                if keep_cached is not None and keep_cached[block_id] is not None:
                    cached[block_id] = None
                else:
                    free.append(block_id)

    def uncache(self, block_id: int) -> None:
        """A cached block whose content is dropped becomes free."""
        del self._cached[block_id]
        self._free.append(block_id)

    def check(self) -> None:
        """Assert the invariants (O(num_blocks), for tests)."""
        free, cached = list(self._free), list(self._cached)
        assert len(set(free)) == len(free), "a block is twice in the free list"
        assert not set(free) & set(cached), "a block is both free and cached"
        for block_id in free + cached:
            assert self.refcounts[block_id] == 0, f"block {block_id} is listed free but held"
        used = sum(1 for count in self.refcounts if count > 0)
        assert min(self.refcounts, default=0) >= 0
        assert len(free) + len(cached) + used == self.num_blocks, "blocks leaked"
