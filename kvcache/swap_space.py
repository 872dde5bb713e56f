"""Swap bookkeeping: host block ids for swapped-out sequences, and the traffic they cost.

swap_out gives each of a sequence's device blocks a host block, logs a SWAP_OUT copy per block
and releases the device blocks (blocks other sequences share, or the prefix cache indexes, stay
where they are for them). swap_in takes fresh device blocks, logs a SWAP_IN copy per block and
frees the host blocks. Bytes are counted at `block_bytes` a block: the cost model charges them.
Plain Python; `kvcache.swap.HostSwapPool` moves the bytes.
"""

from __future__ import annotations

from kvcache.allocator import BlockAllocator
from kvcache.block_pool import BlockPool
from kvcache.block_table import BlockTable
from kvcache.copy_ops import SWAP_IN, SWAP_OUT, KVCopy
from kvcache.errors import OutOfBlocksError, SwapSpaceError


class SwapSpace:
    def __init__(self, num_blocks: int, block_bytes: int):
        self.host = BlockAllocator(num_blocks)
        self.block_bytes = block_bytes
        self.counts = dict.fromkeys(("swap_out_blocks", "swap_in_blocks", "swap_out_bytes", "swap_in_bytes"), 0)

    def swap_out(self, pool: BlockPool, table: BlockTable) -> list[tuple[int, int]]:
        """(device_block, host_block) pairs; the table then holds host ids."""
        seq_id, size, host = table.seq_id, pool.block_size, self.host
        if len(table.blocks) > host.num_free:
            raise SwapSpaceError(f"swap-out needs {len(table.blocks)} host blocks, {host.num_free} "
                                 f"free of {host.num_blocks}", seq_id=seq_id, block_ids=table.blocks)
        pairs = list(zip(table.blocks, host.allocate_many(len(table.blocks), seq_id)))
        for device_id, host_id in pairs:
            pool.log(KVCopy(SWAP_OUT, device_id * size, host_id * size, size))
        pool.release_all(table.blocks, seq_id)
        table.blocks, table.swapped = [host_id for _, host_id in pairs], True
        self._count("out", len(pairs))
        return pairs

    def swap_in(self, pool: BlockPool, table: BlockTable) -> list[tuple[int, int]]:
        """(device_block, host_block) pairs; the table then holds fresh device ids."""
        seq_id, size = table.seq_id, pool.block_size
        if not table.swapped:
            raise SwapSpaceError("swap-in of a sequence that is not swapped out", seq_id=seq_id)
        available = pool.allocator.num_available
        if len(table.blocks) > available:
            raise OutOfBlocksError(f"swap-in needs {len(table.blocks)} device blocks, {available} "
                                   "available", seq_id=seq_id, block_ids=table.blocks)
        pairs = list(zip(pool.take_many(len(table.blocks), seq_id), table.blocks))
        for device_id, host_id in pairs:
            pool.log(KVCopy(SWAP_IN, host_id * size, device_id * size, size))
        self.host.release_many(table.blocks, None, seq_id)
        table.blocks, table.swapped = [device_id for device_id, _ in pairs], False
        self._count("in", len(pairs))
        return pairs

    def _count(self, direction: str, num_blocks: int) -> None:
        self.counts[f"swap_{direction}_blocks"] += num_blocks
        self.counts[f"swap_{direction}_bytes"] += num_blocks * self.block_bytes
