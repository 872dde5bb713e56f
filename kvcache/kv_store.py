"""The physical KV cache: per-layer K and V tensors indexed by block id.

Layout per layer: K and V [num_blocks, block_size, num_kv_heads, head_dim] in the KV dtype.
The bookkeeping (which block belongs to whom) lives in the block manager; this class only
holds the bytes and writes new K/V to the slots it is given.
"""

from __future__ import annotations

import torch

from kernels.reference import write_kv_ref


class PagedKVStore:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float16, device: str | torch.device = "cpu"):
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim, self.dtype = num_kv_heads, head_dim, dtype
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, N, bs, Hkv, D]
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """K, V of layer i and their scales (None for a floating-point cache)."""
        return self.k[i], self.v[i], None

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Store new K/V [T, Hkv, D] of layer i at flat slots [T] (-1 = skip)."""
        write_kv_ref(k, v, self.k[i], self.v[i], slot_mapping)
