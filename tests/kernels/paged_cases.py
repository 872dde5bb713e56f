"""Random paged caches for the kernel tests: shuffled block tables, ragged lengths."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.reference import quantize_ref

QUANT_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class PagedCache:
    k: torch.Tensor             # [num_blocks, page, Hkv, D] in the KV dtype
    v: torch.Tensor
    kv_scales: tuple[torch.Tensor, torch.Tensor] | None  # [num_blocks, page, Hkv] fp16 each
    block_tables: torch.Tensor  # [B, max_blocks] int32, a random permutation of the blocks
    seq_lens: torch.Tensor      # [B] int32

    @property
    def max_slots(self) -> int:
        return self.block_tables.shape[1] * self.k.shape[1]


def make_cache(gen: torch.Generator, seq_lens: list[int], page: int, num_kv_heads: int, head_dim: int,
               kv_dtype: str, spare_blocks: int = 3) -> PagedCache:
    """A cache holding len(seq_lens) sequences, every block id drawn from a shuffled pool."""
    max_blocks = max(1, max(-(-n // page) for n in seq_lens))
    num_blocks = len(seq_lens) * max_blocks + spare_blocks
    shape = (num_blocks, page, num_kv_heads, head_dim)
    k = torch.randn(shape, generator=gen)
    v = torch.randn(shape, generator=gen)
    block_tables = torch.randperm(num_blocks, generator=gen)[: len(seq_lens) * max_blocks]
    block_tables = block_tables.view(len(seq_lens), max_blocks).to(torch.int32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    if kv_dtype in QUANT_DTYPES:
        (kq, ks), (vq, vs) = quantize_ref(k, QUANT_DTYPES[kv_dtype]), quantize_ref(v, QUANT_DTYPES[kv_dtype])
        return PagedCache(kq, vq, (ks, vs), block_tables, lens)
    dt = FLOAT_DTYPES[kv_dtype]
    return PagedCache(k.to(dt), v.to(dt), None, block_tables, lens)


def query_dtype(kv_dtype: str) -> torch.dtype:
    return torch.bfloat16 if kv_dtype == "bf16" else torch.float16


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()
