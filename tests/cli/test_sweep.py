"""sweep: the curve and its knee, resuming after an interruption, Ray and local runs equal."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import time

import pandas as pd
import pytest

from conftest import JSON_KEYS, KVSIM, SWEEP_ARGS, kvsim, kvsim_json, without_wall_time


def test_sweep_points_and_knee(small_sweep):
    out, records = small_sweep
    assert [(r["policy"], r["num_sessions"]) for r in records] == [
        (p, n) for p in ("full", "streaming") for n in (1, 2, 4, 8)]
    for r in records:
        assert all(k in r for k in JSON_KEYS)
        assert r["requests_completed"] + r["requests_rejected"] + r["requests_in_flight"] == r["requests_submitted"]
        assert r["max_seqs_held"] <= r["num_sessions"]
        knees = {x["knee_sessions"] for x in records if x["policy"] == r["policy"]}
        assert len(knees) == 1 and r["is_knee"] == (r["num_sessions"] == r["knee_sessions"])
    full = [r["output_tokens_per_s"] for r in records if r["policy"] == "full"]
    streaming = [r["output_tokens_per_s"] for r in records if r["policy"] == "streaming"]
    assert full[-1] > full[0]  # more sessions add throughput until KV memory saturates...
    assert streaming[-1] > 1.5 * full[-1]  # ...which eviction postpones (0.05 GiB: the full cache preempts at 2)
    assert streaming == sorted(streaming)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["points_run"] == 8 and manifest["knees"].keys() == {"full fp16", "streaming fp16 b256"}
    assert (out / "plots" / "throughput_vs_sessions.png").is_file()
    sessions = pd.read_parquet(out / "sessions.parquet")
    assert {"point", "num_sessions", "session_id", "turns_completed"} <= set(sessions.columns)


def test_knee_rule():
    from kvsim.closed_loop import knee

    assert knee([1, 2, 4, 8, 16], [10, 20, 40, 41, 41.5], 0.05) == 4
    assert knee([1, 2, 4, 8], [10, 20, 40, 80], 0.05) is None
    assert knee([1, 4, 16], [10, 40, 42], 0.05) == 4  # gain per doubling, over two doublings
    assert knee([1, 2, 4, 8], [10, 10.2, 30, 31], 0.05) == 4  # a later rise resets it


def test_resume_runs_only_missing_points(small_sweep, tmp_path):
    source, records = small_sweep
    out = tmp_path / "resumed"
    shutil.copytree(source, out)
    shutil.rmtree(out / "points" / "streaming-fp16-b256-n4")
    (out / "points" / "full-fp16-n8" / "result.json").unlink()  # no completion mark: not finished
    done = kvsim("sweep", *SWEEP_ARGS, "--jobs", "1", "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    assert "2 point(s) to run" in done.stderr and "6 already finished" in done.stderr
    assert json.loads((out / "run.json").read_text())["points_skipped"] == 6
    assert without_wall_time(json.loads(done.stdout)) == without_wall_time(records)


def test_interrupted_sweep_restarts_where_it_stopped(small_sweep, tmp_path):
    _, records = small_sweep
    out = tmp_path / "interrupted"
    proc = subprocess.Popen([*KVSIM, "sweep", *SWEEP_ARGS, "--jobs", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("points/*/result.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    finished = len(list(out.glob("points/*/result.json")))
    assert proc.returncode == 130 and "interrupted" in err, err[-2000:]
    assert 2 <= finished < 8 and not (out / "summary.json").exists()
    assert not list(out.rglob(".*.tmp-*")), "a temporary file survived the interrupt"
    for mark in out.glob("points/*/result.json"):
        json.loads(mark.read_text())  # every file under its real name is whole
    done = kvsim("sweep", *SWEEP_ARGS, "--jobs", "1", "--out", out, "--json")
    assert done.returncode == 0, done.stderr
    assert f"{8 - finished} point(s) to run" in done.stderr
    assert without_wall_time(json.loads(done.stdout)) == without_wall_time(records)


def test_parallel_local_processes_equal_serial(small_sweep, tmp_path):
    _, records = small_sweep
    parallel = kvsim_json("sweep", *SWEEP_ARGS, "--jobs", "2", "--out", tmp_path / "p")
    assert without_wall_time(parallel) == without_wall_time(records)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_equals_serial(small_sweep, tmp_path):
    _, records = small_sweep
    started = time.perf_counter()
    on_ray = kvsim_json("sweep", *SWEEP_ARGS, "--ray", "--jobs", "1", "--out", tmp_path / "ray",
                        env={"RAY_USAGE_STATS_ENABLED": "0"})
    print(f"ray sweep: {time.perf_counter() - started:.1f} s")
    assert without_wall_time(on_ray) == without_wall_time(records)
