"""Host swap pool: whole blocks of the device cache copied to host memory and back.

The pool mirrors every per-slot tensor of a `PagedKVStore` (K, V, scales, zero points) with
num_blocks host blocks, pinned when the store is on a GPU. The manager decides which host block
takes which device block (`KVCacheManager.swap_out` / `swap_in`, or the SWAP_OUT / SWAP_IN
entries of its copy log); this class moves the bytes, exactly, and counts them.
"""

from __future__ import annotations

import torch

from kvcache.errors import SwapSpaceError
from kvcache.kv_store import PagedKVStore, byte_view


class HostSwapPool:
    def __init__(self, store: PagedKVStore, num_blocks: int, pin_memory: bool | None = None):
        self.store, self.num_blocks = store, num_blocks
        if pin_memory is None:
            pin_memory = store.k.is_cuda
        # one host tensor per store tensor: [L, num_blocks, bs, ...] in the same dtype
        self.tensors = [torch.zeros((t.shape[0], num_blocks, *t.shape[2:]), dtype=t.dtype,
                                    pin_memory=pin_memory) for t in store.slot_tensors()]
        self.bytes_out = 0  # device -> host
        self.bytes_in = 0  # host -> device

    @property
    def block_bytes(self) -> int:
        return self.store.block_bytes

    def _check(self, pairs: list[tuple[int, int]]) -> None:
        bad = [host for _, host in pairs if not 0 <= host < self.num_blocks]
        if bad:
            raise SwapSpaceError(f"host blocks {bad} outside the pool of {self.num_blocks}", block_ids=bad)

    def swap_out(self, pairs: list[tuple[int, int]]) -> None:
        """Copy device blocks to host blocks; pairs are (device_block, host_block)."""
        if not pairs:
            return
        self._check(pairs)
        device_ids = torch.tensor([d for d, _ in pairs], dtype=torch.long, device=self.store.k.device)
        host_ids = torch.tensor([h for _, h in pairs], dtype=torch.long)
        for host, dev in zip(self.tensors, self.store.slot_tensors()):
            byte_view(host)[:, host_ids] = byte_view(dev)[:, device_ids].to("cpu", non_blocking=False)
        self.bytes_out += len(pairs) * self.block_bytes

    def swap_in(self, pairs: list[tuple[int, int]]) -> None:
        """Copy host blocks back to device blocks; pairs are (device_block, host_block)."""
        if not pairs:
            return
        self._check(pairs)
        device = self.store.k.device
        device_ids = torch.tensor([d for d, _ in pairs], dtype=torch.long, device=device)
        host_ids = torch.tensor([h for _, h in pairs], dtype=torch.long)
        for host, dev in zip(self.tensors, self.store.slot_tensors()):
            byte_view(dev)[:, device_ids] = byte_view(host)[:, host_ids].to(device)
        self.bytes_in += len(pairs) * self.block_bytes
