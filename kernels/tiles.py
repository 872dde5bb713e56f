"""Query tiles of the paged prefill kernel, on the host (no triton import): how many new tokens
one program takes, and the tile map a CUDA-graphed step packs with its inputs.

A program of kernels/prefill_attention.py takes `prefill_query_tile(Hq, Hkv)` new tokens of one
sequence with all query heads of one KV head: PREFILL_BLOCK_ROWS rows of tokens x padded group.
"""

from __future__ import annotations

import numpy as np

PREFILL_BLOCK_ROWS = 64


def prefill_query_tile(num_heads: int, num_kv_heads: int, block_rows: int = PREFILL_BLOCK_ROWS) -> int:
    """New tokens per program: block_rows over the GQA group padded to a power of two."""
    group = num_heads // num_kv_heads
    group_pad = 1 << (group - 1).bit_length()
    return max(1, block_rows // group_pad)


def max_query_tiles(tokens: int, rows: int, tile: int) -> int:
    """The most tiles `rows` sequences feeding `tokens` new tokens in all can need: each sequence's
    last tile may be partial, so sum ceil(n_b / tile) <= tokens // tile + rows."""
    return tokens // tile + rows


def prefill_query_tiles(new_tokens, tile: int, num_tiles: int | None = None) -> np.ndarray:
    """[2, num_tiles] int64: (sequence, first new token) of each tile of the sequences feeding
    new_tokens[b] tokens (a sequence without new tokens has none), then (-1, 0) padding."""
    new_tokens = np.asarray(new_tokens, dtype=np.int64)
    counts = -(-new_tokens // tile)
    total = int(counts.sum())
    num_tiles = total if num_tiles is None else num_tiles
    assert total <= num_tiles, f"{total} query tiles do not fit a map of {num_tiles}"
    out = np.zeros((2, num_tiles), np.int64)
    out[0, total:] = -1
    seq = np.repeat(np.arange(len(new_tokens)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)  # each tile's sequence's first tile index
    out[0, :total] = seq
    out[1, :total] = (np.arange(total) - starts) * tile
    return out
