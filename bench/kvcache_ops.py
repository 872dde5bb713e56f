"""KV cache bookkeeping speed: block operations per second on the CPU, per op mix.

    python bench/kvcache_ops.py [--runs 3] [--out bench/results/kvcache_ops_cpu.json]

A block operation is one block taken from or returned to the allocator, one prefix-cache block
lookup (hit or miss), or one appended decode token (can_append + append_slots). Each mix runs
`--runs` times; the table shows the median. Target (issue 3): >= 300k block operations/s.
Writes JSON with the CPU model (/proc/cpuinfo), the date, the Python version and the op mixes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[0] = str(REPO)  # import the repo's packages, not bench/ siblings

from kvcache.allocator import BlockAllocator  # noqa: E402
from kvcache.manager import KVCacheManager  # noqa: E402

TRACE = REPO.parent / "shared" / "traces" / "mooncake_conversation_trace.jsonl"
TARGET_OPS_PER_S = 300_000


def mix_allocator() -> tuple[int, float]:
    """Raw allocator: take 64 blocks, release them, 20k times."""
    alloc = BlockAllocator(4096)
    start = time.perf_counter()
    for _ in range(20_000):
        blocks = alloc.allocate_many(64)
        alloc.release_many(blocks, None)
    return 20_000 * 128, time.perf_counter() - start


def mix_prefill_prefix() -> tuple[int, float]:
    """Prefix-cached prefill: 2,000 prompts of 2,048 tokens (16-token blocks), each a shared
    1,024-token system prompt (one of 8) plus its own text; allocate, then free."""
    mgr = KVCacheManager(20_000, 16, watermark=0.0, enable_prefix_caching=True, record_copies=False)
    systems = [[1000 * s + t for t in range(1024)] for s in range(8)]
    prompts = [systems[i % 8] + [10**6 + 1024 * i + t for t in range(1024)] for i in range(2_000)]
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        mgr.allocate(i, len(prompt), token_ids=prompt)
        mgr.free(i)
    seconds = time.perf_counter() - start
    s = mgr.stats()
    return 2 * s["prefix_query_blocks"] + s["prefix_miss_blocks"], seconds  # lookups + takes + releases


def mix_decode_append() -> tuple[int, float]:
    """Decode: 64 sequences, one token each per step, 4,000 steps (prefix caching on)."""
    mgr = KVCacheManager(40_000, 16, watermark=0.0, enable_prefix_caching=True, record_copies=False)
    tokens = {i: list(range(500)) + [i] for i in range(64)}
    for i, t in tokens.items():
        mgr.allocate(i, len(t), token_ids=t)
    start = time.perf_counter()
    for step in range(4_000):
        for i, t in tokens.items():
            t.append(step)
            if mgr.can_append(i, 1):
                mgr.append_slots(i, 1)
    return 64 * 4_000, time.perf_counter() - start


def mix_decode_evict() -> tuple[int, float]:
    """Decode under a StreamingLLM-like budget: 64 sequences at 1,024 tokens, each step evicts
    the oldest non-sink token (keep_holes=1) and appends one; evict + append = 2 operations."""
    mgr = KVCacheManager(8_000, 16, watermark=0.0, record_copies=False)
    for i in range(64):
        mgr.allocate(i, 1024)
    oldest = {i: 4 for i in range(64)}  # position to evict next (4 sink tokens stay)
    slot_of = {i: {p: p for p in range(1024)} for i in range(64)}  # position -> logical slot
    start = time.perf_counter()
    for step in range(2_000):
        for i in range(64):
            slot = slot_of[i].pop(oldest[i])
            mgr.evict_tokens(i, [slot], keep_holes=1)
            oldest[i] += 1
            mgr.append_slots(i, 1)
            slot_of[i][1024 + step] = slot  # the new token took the hole
    return 2 * 64 * 2_000, time.perf_counter() - start


def mix_mooncake() -> tuple[int, float]:
    """Mooncake conversation trace, first 3,000 requests, hash_ids over 16-token blocks
    (32 engine blocks a trace id), a 200k-block cache; allocate then free each request."""
    rows = [json.loads(line) for line in TRACE.read_text().splitlines()[:3_000]]
    mgr = KVCacheManager(200_000, 16, watermark=0.0, enable_prefix_caching=True,
                         prefix_id_block_size=512, record_copies=False)
    start = time.perf_counter()
    for i, r in enumerate(rows):
        mgr.allocate(i, r["input_length"], prefix_block_ids=r["hash_ids"])
        mgr.free(i)
    seconds = time.perf_counter() - start
    s = mgr.stats()
    return 2 * s["prefix_query_blocks"] + s["prefix_miss_blocks"], seconds


MIXES = {
    "allocator take/release": (mix_allocator, "BlockAllocator.allocate_many(64) + release_many, 20k rounds"),
    "prefill + prefix cache": (mix_prefill_prefix, mix_prefill_prefix.__doc__),
    "decode append": (mix_decode_append, mix_decode_append.__doc__),
    "decode evict + append": (mix_decode_evict, mix_decode_evict.__doc__),
    "mooncake hash_ids replay": (mix_mooncake, mix_mooncake.__doc__),
}


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else None
    return found.group(1).strip() if found else (platform.processor() or "unknown CPU")


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "kvcache_ops_cpu.json")
    args = parser.parse_args()
    results, load_before = [], _load_average()
    print(f"{'op mix':<26} {'block ops':>11} {'median s':>9} {'ops/s':>11}  target")
    for name, (mix, description) in MIXES.items():
        if mix is mix_mooncake and not TRACE.exists():
            print(f"{name:<26} skipped: {TRACE} is not present")
            continue
        runs = [mix() for _ in range(args.runs)]
        ops = runs[0][0]
        seconds = statistics.median(s for _, s in runs)
        rate = ops / seconds
        results.append({"mix": name, "description": " ".join(description.split()), "block_ops": ops,
                        "runs_s": [round(s, 4) for _, s in runs], "median_s": round(seconds, 4),
                        "ops_per_s": round(rate), "meets_target": rate >= TARGET_OPS_PER_S})
        print(f"{name:<26} {ops:>11,} {seconds:>9.3f} {rate:>11,.0f}  {'ok' if rate >= TARGET_OPS_PER_S else 'BELOW'}")
    record = {
        "benchmark": "kvcache bookkeeping block operations per second (plain Python, one thread)",
        "device": cpu_model(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        # other processes on a shared machine slow every mix alike: the 1-minute load average
        "load_average_1m": {"before": load_before, "after": _load_average()},
        "target_ops_per_s": TARGET_OPS_PER_S, "runs_per_mix": args.runs, "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["meets_target"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
