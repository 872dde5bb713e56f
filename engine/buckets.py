"""The sizes CUDA graphs are captured for (engine/runner.py), and the padding a step gets: shared
by the runner, the profiler that records them and the calibrated cost model that predicts a
padded step (pure Python: the analytic mode reads them without a GPU).
"""

from __future__ import annotations

# Batch buckets as vLLM's: small powers of two, then steps of 16 (padding costs at most 15 rows)
BATCH_BUCKETS = [1, 2, 4, 8] + list(range(16, 513, 16))
MIN_WIDTH_BLOCKS = 16  # block-table width buckets: powers of two from this many blocks
# Prefill steps: tokens in steps of 16 to 128, then eight steps per doubling (padding <= 12.5%);
# sequences in powers of two (a padding sequence costs one table row, and no token)
TOKEN_BUCKETS = list(range(16, 128, 16)) + [p + i * p // 8 for p in (128, 256, 512, 1024, 2048, 4096)
                                           for i in range(8)] + [8192]
SEQ_BUCKETS = [1 << i for i in range(10)]
MAX_GRAPH_TOKENS = 2048  # the scheduler's default step budget; larger prefill steps are GPU-bound anyway
# A scored step with prefill (H2O, TOVA) runs its one-token rows in the decode kernel (split-K, scores
# from its score pass) when the longest of them reads this many tokens or more; below, every row runs in
# the prefill and score kernels (one launch each a layer; the split's decode kernel, score pass and merge
# cost more than a short row's walk). SmolLM2-135M on an H100, the same 80 seeded compositions both ways
# (profiles of 2026-12-06 10:19 and 11:40): split / unsplit 1.03-1.15 with no decode row, 1.06-1.11
# (median by bin) with the longest under 2,048 tokens, 1.02-1.08 at 2,048-3,072, 0.82-1.01 at
# 3,072-4,096, 0.68-0.88 past 4,096 (down to 0.23 for a few long rows beside a short chunk).
SCORED_SPLIT_MIN_CONTEXT = 3072


def scored_split(longest_decode_row: int) -> bool:
    """Whether a scored step with prefill runs its one-token rows in the decode kernel."""
    return longest_decode_row >= SCORED_SPLIT_MIN_CONTEXT


def bucket(n: int, buckets) -> int | None:
    """The first bucket >= n, None past the last."""
    return next((b for b in buckets if b >= n), None)


def width_bucket(blocks: int, min_blocks: int = MIN_WIDTH_BLOCKS) -> int:
    """A block table of `blocks` columns padded to a power of two, at least min_blocks."""
    return max(min_blocks, 1 << (max(blocks, 1) - 1).bit_length())
