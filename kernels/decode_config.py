"""What paged decode attention runs: tile configs, the split-K rule, the INT8 conversion and
where score_out's probabilities are made; tuned by bench/kernels.py on an H100, which prints
these lines as they ran (the JSON's "defaults"/"patch").

Plain host code (no triton, no GPU sync): kernels/decode_attention.py's launcher reads these
module attributes on every call, and a caller that captures CUDA graphs can compute the split
count it passes (decode_num_splits) without importing the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MAX_SPLITS = 128


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int = 64           # tokens per tile
    num_warps: int = 4
    num_stages: int = 3
    programs_per_sm: int = 16   # split-K target (choose_num_splits)
    min_split_tiles: int = 4    # the shortest split, in tiles
    # The softmax denominator kept as per-slot partial sums, added up once after the loop, not
    # summed over every tile (a reduction across warps with two barriers): fewer instructions,
    # more registers (INT8 D128 sass: 561 against 579 a loop, 136 against 128 registers).
    row_sums: bool = False


# Configs by (KV element bytes, head dim), tuned by bench/kernels.py on an H100 (CUDA-graph
# times; bench/results/kernels_h100.json, "tuning" and "defaults"); other head dims take the
# nearest. The split count: ceil(programs_per_sm * SMs / (B * Hkv)) splits of at least
# min_split_tiles tiles; one split per (sequence, KV head) once B * Hkv >= ONE_SPLIT_WAVES * SMs
# (the batch alone fills the GPU: splits then only add workspace traffic and a reduce launch;
# run 1 measured (64, 4096) 369 us with one split against 385 us with 5).
# Tuned on the H100, 2026-11-23 (bench/results/kernels_h100.json, "defaults"):
CONFIGS = {(2, 128): DecodeConfig(64, 4, 2, 8, 2, False), (2, 64): DecodeConfig(64, 4, 2, 4, 4, False),
           (1, 128): DecodeConfig(64, 4, 2, 8, 2, False), (1, 64): DecodeConfig(64, 4, 2, 16, 4, False)}
ONE_SPLIT_WAVES = 2
# INT8 -> fp16 inside the kernel, a key of attention_tile.I8_MODES: "i2f" (the I2F instruction),
# "bits" (integer ops on int32 words, validated on the H100 in run 3), "prmt" / "prmt_kv" (PTX
# prmt, 5 instructions per 4 values; attention_tile.i8_to_f16_prmt), "i8dot" (K not converted:
# an int8 Q.K^T dot with the query in two int8 parts, V as "prmt"; not yet timed on a GPU).
# bench/kernels.py checks every mode on the GPU, times those that pass and installs the
# fastest; the interpreter runs the PRMT modes as "bits" and "i8dot" with V by .to(fp16).
INT8_CONVERT = "prmt"  # H100 geomean: bits 292.8 us, prmt 273.6, prmt_kv 281.9
# score_out with one split: stage 1 turns its own logits into scores after its loop (its LSE is
# final), no second launch. Otherwise stage 2 does, in chunks of the context sized to give
# B * Hkv * chunks >= SCORE_PROGRAMS_PER_SM * SMs programs whatever the split count.
SCORES_IN_SPLIT = False  # H100 geomean: in stage 1 831.7 us, in stage 2 822.3
SCORE_PROGRAMS_PER_SM = 8
SCORE_BLOCK = 256  # slots a step of the score pass (a bench candidate from run 5: 256, 512, 1024)


def default_config(head_dim: int, kv_dtype: torch.dtype | int) -> DecodeConfig:
    """The config for this head dim and KV dtype (a torch dtype, or its element size in bytes)."""
    size = 1 if (kv_dtype if isinstance(kv_dtype, int) else kv_dtype.itemsize) == 1 else 2
    dims = [d for (e, d) in CONFIGS if e == size]
    return CONFIGS[(size, min(dims, key=lambda d: (abs(d - head_dim), d)))]


def choose_num_splits(batch: int, num_kv_heads: int, context_tokens: int, num_sms: int, block_n: int,
                      programs_per_sm: int = 16, min_split_tiles: int = 4) -> int:
    """Split the context until the grid has programs_per_sm programs an SM, each >= min_split_tiles
    tiles long; no split once B * Hkv alone is ONE_SPLIT_WAVES waves of programs over the SMs.

    The price of a split, its partial output, is 4 * head_dim bytes per query head against
    4 * head_dim bytes per token of K and V; stage 2 reads all of a head's splits in one go.
    A pure function of host ints (no GPU sync), so a caller capturing CUDA graphs can compute
    num_splits from its batch size and block-table width and pass it.
    """
    if batch * num_kv_heads >= ONE_SPLIT_WAVES * num_sms:
        return 1
    by_occupancy = _cdiv(programs_per_sm * num_sms, batch * num_kv_heads)
    by_length = _cdiv(context_tokens, min_split_tiles * block_n)
    return max(1, min(by_occupancy, by_length, MAX_SPLITS))


def split_length(context_tokens: int, num_splits: int, block_n: int) -> int:
    """Keys one split covers: the context over the split count, in whole tiles (the launcher's
    rule; the split count then follows from it, so no split is empty)."""
    return _cdiv(_cdiv(context_tokens, min(max(num_splits, 1), MAX_SPLITS)), block_n) * block_n


def decode_num_splits(batch: int, num_kv_heads: int, context_tokens: int, head_dim: int, kv_dtype: torch.dtype | int,
                      num_sms: int) -> int:
    """The split count paged_decode_attention picks by itself for this shape and default config
    (context_tokens: the longest sequence, or the block table's capacity)."""
    cfg = default_config(head_dim, kv_dtype)
    return choose_num_splits(batch, num_kv_heads, max(1, context_tokens), num_sms, cfg.block_n,
                             cfg.programs_per_sm, cfg.min_split_tiles)


def decode_walk(batch: int, num_kv_heads: int, capacity: int, longest: int, head_dim: int, kv_dtype: torch.dtype | int,
                num_sms: int) -> int:
    """Keys the longest sequence's longest split walks in one program, in a launch of `batch` rows
    whose block tables hold `capacity` slots (the split count follows from those, as in the
    launcher): the serial part of the step, which no other program can take over."""
    context = max(1, capacity)
    splits = decode_num_splits(batch, num_kv_heads, context, head_dim, kv_dtype, num_sms)
    return min(longest, split_length(context, splits, default_config(head_dim, kv_dtype).block_n))


def choose_score_chunks(batch: int, num_kv_heads: int, context_tokens: int, num_sms: int) -> int:
    """Chunks of the context for stage 2's score pass: SCORE_PROGRAMS_PER_SM programs an SM, each
    at least two SCORE_BLOCKs long, independent of the split count (one split must not leave one
    program per (sequence, KV head) walking the whole context)."""
    by_occupancy = _cdiv(SCORE_PROGRAMS_PER_SM * num_sms, batch * num_kv_heads)
    by_length = _cdiv(context_tokens, 2 * SCORE_BLOCK)
    return max(1, min(by_occupancy, by_length))
