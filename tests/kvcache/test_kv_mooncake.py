"""The Mooncake conversation trace replayed through the prefix cache by its hash_ids.

Each request, in arrival order, allocates its blocks from its hash_ids and frees them at once,
so its blocks stay cached until LRU reclaim. With an infinite cache the block hit rate is the
36.6% the trace's README gives; a smaller cache can only hit less.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvcache.manager import KVCacheManager

TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "mooncake_conversation_trace.jsonl"


@pytest.fixture(scope="module")
def requests() -> list[dict]:
    if not TRACE.exists():
        pytest.skip(f"{TRACE} is not present (tests read ../shared beside the repo)")
    rows = [json.loads(line) for line in TRACE.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["timestamp"])  # stable: ties keep file order


def replay(requests: list[dict], num_blocks: int, block_size: int) -> dict:
    mgr = KVCacheManager(num_blocks, block_size, watermark=0.0, enable_prefix_caching=True,
                         prefix_id_block_size=512, record_copies=False)
    for i, r in enumerate(requests):
        mgr.allocate(i, r["input_length"], prefix_block_ids=r["hash_ids"])
        mgr.free(i)
    mgr.check_invariants()
    return mgr.stats()


def expected_hits(requests: list[dict], block_size: int) -> tuple[int, int]:
    """An independent count for an infinite cache: a full engine block hits when the same
    (trace-id prefix, offset) was seen before and every block before it hit; hits stop before
    the last prompt token."""
    seen, hits, total = set(), 0, 0
    for r in requests:
        n, ids = r["input_length"], r["hash_ids"]
        total += -(-n // block_size)
        keys = []
        for j in range(n // block_size):
            start = j * block_size
            first, last = start // 512, (start + block_size - 1) // 512
            keys.append((tuple(ids[:last + 1]), start - first * 512))
        for key in keys[:(n - 1) // block_size]:
            if key not in seen:
                break
            hits += 1
        seen.update(keys)
    return hits, total


def test_infinite_cache_hits_the_readme_rate(requests):
    stats = replay(requests, 300_000, 512)
    assert (stats["prefix_hit_blocks"], stats["prefix_query_blocks"]) == expected_hits(requests, 512)
    assert stats["prefix_query_blocks"] == 288_500
    assert round(stats["prefix_hit_rate"], 3) == 0.366
    assert stats["cached_block_evictions"] == 0


def test_hit_rate_falls_as_the_cache_shrinks(requests):
    rates = [replay(requests, n, 512)["prefix_hit_rate"] for n in (300_000, 40_000, 10_000, 2_000, 500)]
    assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[0] > rates[-1]


def test_trace_blocks_split_into_engine_blocks(requests):
    head = requests[:600]
    stats = replay(head, 1_000_000, 16)  # one 512-token trace block = 32 engine blocks
    assert (stats["prefix_hit_blocks"], stats["prefix_query_blocks"]) == expected_hits(head, 16)
