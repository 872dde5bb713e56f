"""Shared helpers for the kvcache tests: a real small store that records what each slot holds.

A token at position p of a sequence is written as K = [code(p), p], V = [p, token(p)], where
code(p) is a hash of the whole prefix up to p: reading a slot back tells exactly which prefix
and position it holds, so a wrong prefix hit, a lost copy or a stale swap cannot go unseen.
All values are integers below 2**24, exact in float32.
"""

from __future__ import annotations

import torch

from kvcache.copy_exec import apply_copies
from kvcache.kv_store import PagedKVStore
from kvcache.manager import KVCacheManager
from kvcache.swap import HostSwapPool


def prefix_codes(tokens: list[int]) -> list[int]:
    codes, code = [], 7
    for tok in tokens:
        code = (code * 131 + tok + 1) % 1_000_003
        codes.append(code)
    return codes


class ShadowCache:
    """A manager with a real fp32 store (1 layer, 1 head, head_dim 2) and a host pool."""

    def __init__(self, num_blocks: int, block_size: int, num_swap_blocks: int = 0, **kwargs):
        self.store = PagedKVStore(1, num_blocks, block_size, 1, 2, dtype="fp32")
        self.swap = HostSwapPool(self.store, max(num_swap_blocks, 1))
        kwargs.setdefault("watermark", 0.0)
        self.mgr = KVCacheManager(num_blocks, block_size, num_swap_blocks=num_swap_blocks,
                                  block_bytes=self.store.block_bytes, **kwargs)
        self.tokens: dict[object, list[int]] = {}

    def drain(self) -> None:
        apply_copies(self.mgr.take_pending_copies(), self.store, self.swap)

    def write(self, seq_id: object, slots: list[int], positions: list[int]) -> None:
        """Drain the copy log, then write the tokens at these positions to these flat slots."""
        self.drain()
        if not slots:
            return
        codes, tokens = prefix_codes(self.tokens[seq_id]), self.tokens[seq_id]
        k = torch.tensor([[[codes[p], p]] for p in positions], dtype=torch.float32)
        v = torch.tensor([[[p, tokens[p]]] for p in positions], dtype=torch.float32)
        self.store.write(0, k, v, torch.tensor(slots))

    def read(self, seq_id: object) -> list[tuple[int, int, int]]:
        """(code, position, token) per logical slot, from the device or the host pool."""
        mgr, bs = self.mgr, self.mgr.block_size
        blocks, n = mgr.block_table(seq_id), mgr.num_slots(seq_id)
        flat = torch.tensor([blocks[i // bs] * bs + i % bs for i in range(n)], dtype=torch.long)
        if mgr.is_swapped(seq_id):
            k = self.swap.tensors[0][0].reshape(-1, 1, 2)[flat]
            v = self.swap.tensors[1][0].reshape(-1, 1, 2)[flat]
        else:
            k, v = self.store.read(0, flat)
        return [(int(k[i, 0, 0]), int(k[i, 0, 1]), int(v[i, 0, 1])) for i in range(n)]

    def verify(self, seq_id: object, valid_positions: set[int] | None = None) -> None:
        """Every non-hole slot holds this sequence's token at the position slot_positions says."""
        self.drain()
        tokens, codes = self.tokens[seq_id], prefix_codes(self.tokens[seq_id])
        positions = self.mgr.slot_positions(seq_id)
        held = []
        for slot, (pos, (code, stored_pos, tok)) in enumerate(zip(positions, self.read(seq_id))):
            if pos < 0:
                continue
            assert (code, stored_pos, tok) == (codes[pos], pos, tokens[pos]), (
                f"seq {seq_id} slot {slot}: holds {(code, stored_pos, tok)}, expected position {pos}")
            held.append(pos)
        assert len(held) == len(set(held))
        if valid_positions is not None:
            assert set(held) == valid_positions


def new_manager(num_blocks: int = 16, block_size: int = 4, **kwargs) -> KVCacheManager:
    kwargs.setdefault("watermark", 0.0)
    return KVCacheManager(num_blocks, block_size, **kwargs)
