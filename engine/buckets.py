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


def bucket(n: int, buckets) -> int | None:
    """The first bucket >= n, None past the last."""
    return next((b for b in buckets if b >= n), None)


def width_bucket(blocks: int, min_blocks: int = MIN_WIDTH_BLOCKS) -> int:
    """A block table of `blocks` columns padded to a power of two, at least min_blocks."""
    return max(min_blocks, 1 << (max(blocks, 1) - 1).bit_length())
