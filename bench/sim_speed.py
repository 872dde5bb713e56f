"""Simulator speed: the whole Azure conv trace (19,366 requests, about an hour) through the
analytic backend with a llama-3.1-8b shape and its H100 cost model (the shipped calibrated
profile where one exists, else the roofline), on this CPU.

    python bench/sim_speed.py [--trace PATH] [--out bench/results/sim_speed_cpu.json]

Prints a table (wall seconds, simulated seconds per wall second, and the replay summary for
the full cache and StreamingLLM at a 512-token budget) and writes JSON. Issue 6's target: the
full-cache run in <= 20 s wall (>= 175x real time) on a 2-core machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the repo's packages, not bench/

from bench.common import REPO, RESULTS, environment, write_json  # noqa: E402
from scheduler.build import analytic_simulation, requests_from_table  # noqa: E402
from workloads import read_trace  # noqa: E402

CASES = [("full", None), ("streaming-512", 512)]
KEYS = ("requests_completed", "requests_rejected", "num_steps", "sim_time_s", "output_tokens_per_s",
        "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99", "preemptions", "evicted_tokens", "peak_kv_blocks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(REPO.parent / "shared" / "traces" / "AzureLLMInferenceTrace_conv.csv"))
    parser.add_argument("--out", default=str(RESULTS / "sim_speed_cpu.json"))
    args = parser.parse_args()
    trace = read_trace(args.trace)
    requests = requests_from_table(trace.requests)
    rows = []
    for name, budget in CASES:
        sim = analytic_simulation("llama-3.1-8b", "h100", "fp16", budget_tokens=budget)
        sim.add_trace(requests)
        start = time.perf_counter()
        result = sim.run()
        wall = time.perf_counter() - start
        s = result.summary
        rows.append({"case": name, "budget_tokens": budget, "wall_s": wall,
                     "sim_s_per_wall_s": s["sim_time_s"] / wall, **{k: s[k] for k in KEYS}})
    print(f"{'case':14s} {'wall s':>7s} {'sim/wall':>9s} {'steps':>8s} {'out tok/s':>9s} "
          f"{'TTFT p50/p99 ms':>16s} {'TPOT p50/p99 ms':>16s} {'evicted':>9s}")
    for r in rows:
        print(f"{r['case']:14s} {r['wall_s']:7.1f} {r['sim_s_per_wall_s']:8.0f}x {r['num_steps']:8d} "
              f"{r['output_tokens_per_s']:9.0f} {r['ttft_ms_p50']:7.1f}/{r['ttft_ms_p99']:<8.1f} "
              f"{r['tpot_ms_p50']:7.2f}/{r['tpot_ms_p99']:<8.2f} {r['evicted_tokens']:9d}")
    write_json(Path(args.out), {"benchmark": "sim_speed", **environment(), "trace": Path(args.trace).name,
                                "requests": len(requests), "model": "llama-3.1-8b", "gpu_cost_model": sim.backend.cost.source,
                                "kv_dtype": "fp16", "target_wall_s": 20.0, "results": rows})


if __name__ == "__main__":
    main()
