"""The copies the bookkeeping asks of the physical cache, as an ordered log.

The manager never touches tensors. When its decisions need bytes to move (a copy-on-write, a
token moved into a hole, a block swapped out or in) it appends a `KVCopy` to a log, and the
compute backend drains the log with `KVCacheManager.take_pending_copies()` and applies it with
`kvcache.copy_exec.apply_copies` before the step writes new K/V. The analytic backend drains and
discards it (or builds the manager with record_copies=False).

The log must be applied in order: a block freed by one operation may be the destination of a
later one. Every copy moves whole slots in every layer, K and V and their scales:
    DEVICE    device flat slots [src, src + n) -> device flat slots [dst, dst + n)
    SWAP_OUT  device flat slots -> host flat slots (a whole block: n == block_size)
    SWAP_IN   host flat slots -> device flat slots (a whole block)
Flat slot = block_id * block_size + offset, in the device cache or the host pool.
"""

from __future__ import annotations

from typing import NamedTuple

DEVICE, SWAP_OUT, SWAP_IN = "device", "swap_out", "swap_in"


class KVCopy(NamedTuple):
    kind: str  # DEVICE | SWAP_OUT | SWAP_IN
    src_slot: int  # first flat slot read
    dst_slot: int  # first flat slot written
    num_slots: int
