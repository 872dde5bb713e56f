"""The physical KV cache: per-layer K and V tensors indexed by block id.

Layout (all layers in one tensor each, layer i is a view):
    k, v               [num_layers, num_blocks, block_size, num_kv_heads, head_dim]  storage dtype
    k_scale, v_scale   [num_layers, num_blocks, block_size, num_kv_heads] float16    INT8 / FP8
    k_zero, v_zero     [num_layers, num_blocks, block_size, num_kv_heads] float16    int8-asym
The bookkeeping (which block belongs to whom) lives in `KVCacheManager`; this class holds the
bytes, quantizes new K/V on write, and copies slots when the manager's copy log says so
(`kvcache.copy_exec`). A flat slot is block_id * block_size + offset.
"""

from __future__ import annotations

import torch

import kernels
from kvcache.dtypes import KVDtype, UnknownKVDtypeError, get_kv_dtype
from kvcache.quant import dequantize, quantize
from kvcache.sizing import KVShape, kv_bytes_per_block, kv_bytes_per_token


class PagedKVStore:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: "str | KVDtype | torch.dtype" = torch.float16,
                 device: str | torch.device = "cpu"):
        """dtype: a KV dtype name ("fp32", "fp16", "bf16", "int8", "int8-asym", "fp8"), a
        KVDtype, or a floating torch.dtype."""
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.spec = get_kv_dtype(dtype)
        self.dtype = self.spec.torch_dtype  # storage dtype
        shape = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=device)  # [L, N, bs, Hkv, D]
        self.v = torch.zeros(shape, dtype=self.dtype, device=device)
        per_slot = (num_layers, num_blocks, block_size, num_kv_heads)
        # scale 1 (and zero point -128) make a never-written slot read as 0, like a float cache
        scales = self.spec.quantized
        self.k_scale = torch.ones(per_slot, dtype=torch.float16, device=device) if scales else None
        self.v_scale = torch.ones(per_slot, dtype=torch.float16, device=device) if scales else None
        zeros = self.spec.has_zero_point
        self.k_zero = torch.full(per_slot, -128.0, dtype=torch.float16, device=device) if zeros else None
        self.v_zero = torch.full(per_slot, -128.0, dtype=torch.float16, device=device) if zeros else None

    @property
    def shape(self) -> KVShape:
        return KVShape(self.num_layers, self.num_kv_heads, self.head_dim)

    @property
    def bytes_per_token(self) -> int:
        """K + V + scales of one token over all layers."""
        return kv_bytes_per_token(self.shape, self.spec)

    @property
    def block_bytes(self) -> int:
        """Bytes of one block over all layers: the manager's `block_bytes`."""
        return kv_bytes_per_block(self.shape, self.spec, self.block_size)

    def slot_tensors(self) -> list[torch.Tensor]:
        """Every per-slot tensor [L, N, bs, ...]: K, V, then scales and zero points if any."""
        return [t for t in (self.k, self.v, self.k_scale, self.v_scale, self.k_zero, self.v_zero)
                if t is not None]

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """K, V [N, bs, Hkv, D] of layer i and their scales (k_scale, v_scale) [N, bs, Hkv], or
        None for a floating-point cache."""
        if self.spec.has_zero_point:
            raise UnknownKVDtypeError(f"KV dtype {self.spec.name!r} has zero points the attention "
                                      "kernels do not read; use read() (torch reference) or 'int8'")
        scales = None if self.k_scale is None else (self.k_scale[i], self.v_scale[i])
        return self.k[i], self.v[i], scales

    def write(self, i: int, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """Store new K/V [T, Hkv, D] of layer i at flat slots [T] (-1 = skip), quantizing if the
        dtype says so."""
        if not self.spec.has_zero_point:
            # on CUDA the Triton write (no host sync: CUDA graphs), quantizing as quantize() does
            scales = None if self.k_scale is None else (self.k_scale[i], self.v_scale[i])
            kernels.write_kv(k, v, self.k[i], self.v[i], slot_mapping, scales)
            return
        keep = slot_mapping >= 0
        slots = slot_mapping[keep].long()
        for x, cache, scale, zero in ((k, self.k, self.k_scale, self.k_zero),
                                      (v, self.v, self.v_scale, self.v_zero)):
            q, s, z = quantize(x[keep], self.spec)
            cache[i].view(-1, self.num_kv_heads, self.head_dim)[slots] = q
            scale[i].view(-1, self.num_kv_heads)[slots] = s
            if zero is not None:
                zero[i].view(-1, self.num_kv_heads)[slots] = z

    def read(self, i: int, slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dequantized float32 K, V [T, Hkv, D] of layer i at flat slots [T] (torch reference)."""
        slots = slot_mapping.long()
        out = []
        for cache, scale, zero in ((self.k, self.k_scale, self.k_zero), (self.v, self.v_scale, self.v_zero)):
            stored = cache[i].view(-1, self.num_kv_heads, self.head_dim)[slots]
            s = None if scale is None else scale[i].view(-1, self.num_kv_heads)[slots]
            z = None if zero is None else zero[i].view(-1, self.num_kv_heads)[slots]
            out.append(dequantize(stored, s, z))
        return out[0], out[1]

    def copy_slots(self, src_slots: list[int], dst_slots: list[int]) -> None:
        """dst[j] = src[j] for flat slots, in every layer and every per-slot tensor.

        All sources are read before any destination is written; the caller keeps the two
        lists free of read-after-write and write-after-write overlaps (see copy_exec).
        """
        device = self.k.device
        src = torch.tensor(src_slots, dtype=torch.long, device=device)
        dst = torch.tensor(dst_slots, dtype=torch.long, device=device)
        for t in self.slot_tensors():
            flat = _flat_slots(t)
            flat[:, dst] = flat[:, src]

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks (src, dst) in every layer (copy-on-write)."""
        device = self.k.device
        src = torch.tensor([s for s, _ in pairs], dtype=torch.long, device=device)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.long, device=device)
        for t in self.slot_tensors():
            raw = byte_view(t)
            raw[:, dst] = raw[:, src]


def byte_view(t: torch.Tensor) -> torch.Tensor:
    """A view indexing works on for every storage dtype (float8 copied as bytes)."""
    return t.view(torch.uint8) if t.dtype.is_floating_point and t.element_size() == 1 else t


def _flat_slots(t: torch.Tensor) -> torch.Tensor:
    """[L, N, bs, ...] -> [L, N * bs, ...] view."""
    raw = byte_view(t)
    return raw.view(raw.shape[0], raw.shape[1] * raw.shape[2], *raw.shape[3:])
