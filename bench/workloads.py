"""Trace read speed: the real Mooncake and Azure traces, median of several reads, against the issue's limits.

    python bench/workloads.py [--runs 7] [--out bench/results/workloads_cpu.json]

Prints a table and writes JSON with the CPU model, the date, each file's size and rows, every
run's seconds and their median. Limits (issue 7, on a 2-core CPU): Mooncake conversation <= 1 s,
Azure conv <= 0.5 s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# This script is bench/workloads.py: with bench/ first on the path, `import workloads` would import it.
sys.path[0] = str(REPO)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.common import cpu_name  # noqa: E402
from workloads import read_trace  # noqa: E402

TRACES = REPO.parent / "shared" / "traces"
CASES = [  # file, limit in seconds
    ("mooncake_conversation_trace.jsonl", 1.0),
    ("AzureLLMInferenceTrace_conv.csv", 0.5),
    ("AzureLLMInferenceTrace_code.csv", 0.5),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "workloads_cpu.json")
    args = parser.parse_args()
    results = []
    for name, limit_s in CASES:
        path = TRACES / name
        if not path.is_file():
            print(f"skipping {name}: {path} is not present")
            continue
        seconds, rows = [], 0
        for _ in range(args.runs):
            start = time.perf_counter()
            trace = read_trace(path)
            seconds.append(time.perf_counter() - start)
            rows = len(trace)
        median_s = statistics.median(seconds)
        results.append(
            {
                "file": name,
                "format": trace.format,
                "bytes": path.stat().st_size,
                "rows": rows,
                "runs_s": [round(s, 4) for s in seconds],
                "median_s": round(median_s, 4),
                "limit_s": limit_s,
                "within_limit": median_s <= limit_s,
                "mrows_per_s": round(rows / median_s / 1e6, 3),
            }
        )
    report = {
        "benchmark": "workloads.read_trace on the real traces in ../shared/traces",
        "device": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "pandas": pd.__version__,
        "numpy": np.__version__,
        "runs_per_file": args.runs,
        "results": results,
    }
    print(f"{report['device']} ({report['cpu_cores']} cores), {args.runs} runs per file, median")
    print(f"{'file':<36} {'MB':>6} {'rows':>7} {'median s':>9} {'limit s':>8}  ok")
    for r in results:
        print(
            f"{r['file']:<36} {r['bytes'] / 1e6:>6.2f} {r['rows']:>7} {r['median_s']:>9.3f} {r['limit_s']:>8.1f}  "
            f"{'yes' if r['within_limit'] else 'NO'}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["within_limit"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
