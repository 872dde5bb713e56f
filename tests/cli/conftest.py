"""CLI tests run the installed console script in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(sys.executable).with_name("kvsim")
KVSIM = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "kvsim.cli"]

# keys every simulation's JSON object has (the list, and what kvsim adds)
JSON_KEYS = ("requests_submitted", "requests_completed", "requests_rejected", "output_tokens_per_s",
             "total_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99", "prefix_hit_rate",
             "peak_kv_blocks", "preemptions", "sim_time_s", "wall_time_s", "peak_kv_bytes", "max_seqs_held",
             "policy", "kv_dtype", "budget_tokens")

# a small, fast workload: 100 requests of the shipped trace, 20x its rate, a cache that binds
SMALL = ["--max-requests", "100", "--rate-scale", "20", "--kv-mem-gib", "0.05", "--no-progress"]


def kvsim(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*KVSIM, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def kvsim_json(*args, **kwargs):
    done = kvsim(*args, "--json", **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvsim: error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def without_wall_time(records):
    """Results minus what is allowed to differ between runs (wall-clock time)."""
    records = records if isinstance(records, list) else [records]
    return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records]


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory):
    """A serial sweep (3 session counts x 2 policies), the reference for resume and Ray tests."""
    out = tmp_path_factory.mktemp("sweep") / "serial"
    records = kvsim_json("sweep", *SWEEP_ARGS, "--jobs", "1", "--out", out)
    return out, records


SWEEP_ARGS = ["--sessions", "1,2,...,8", "--duration-s", "2", "--warmup-s", "0.5", "--policies", "full,streaming",
              "--budgets", "256", "--kv-dtypes", "fp16", "--kv-mem-gib", "0.05", "--no-progress"]
