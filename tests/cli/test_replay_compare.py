"""replay, compare and report: happy paths, the --json contract, the files of a run directory."""

from __future__ import annotations

import json

import pandas as pd

from conftest import JSON_KEYS, SMALL, kvsim, kvsim_json, one_line_error


def check_record(r: dict) -> None:
    missing = [k for k in JSON_KEYS if k not in r]
    assert not missing, missing
    assert r["requests_completed"] + r["requests_rejected"] == r["requests_submitted"]
    assert r["peak_kv_bytes"] == r["peak_kv_blocks"] * (r["kv_capacity_bytes"] // r["num_blocks"])
    assert 0 < r["max_seqs_held"] <= r["requests_submitted"]


def test_replay_writes_a_run_directory(tmp_path):
    out = tmp_path / "run"
    r = kvsim_json("replay", *SMALL, "--policy", "streaming", "--budget", "256", "--out", out)
    check_record(r)
    assert (r["policy"], r["kv_dtype"], r["budget_tokens"], r["requests_submitted"]) == ("streaming", "fp16", 256, 100)
    assert r["backend"] == "analytic" and r["evicted_tokens"] > 0
    for name in ("config.toml", "run.json", "summary.json", "summary.csv", "requests.parquet", "requests.csv",
                 "steps.parquet", "steps.csv", "plots/latency_cdf.png", "plots/kv_blocks.png", "report.html"):
        assert (out / name).is_file(), name
    assert not [p for p in out.rglob(".*")], "temporary files left behind"
    requests = pd.read_parquet(out / "requests.parquet")
    assert len(requests) == 100 and {"ttft_ms", "tpot_ms", "itl_ms", "point"} <= set(requests.columns)
    assert "itl_ms" not in pd.read_csv(out / "requests.csv").columns  # lists live in Parquet only
    steps = pd.read_parquet(out / "steps.parquet")
    assert steps.blocks_used.max() == r["peak_kv_blocks"] and steps.num_running.max() == r["max_seqs_held"]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "Cost model: " in html and "Splitwise" in html


def test_replay_table_and_progress_on_stderr(tmp_path):
    done = kvsim("replay", *SMALL[:-1], "--progress", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    assert "TTFT p99 ms" in done.stdout and "report.html" in done.stdout
    assert "req" in done.stderr  # the bar: requests done out of the total


def test_compare_grid_joins_quality(tmp_path):
    quality = tmp_path / "quality.csv"
    pd.DataFrame([
        {"policy": "full", "budget": None, "kv_dtype": "fp16", "ppl": 10.0, "top1_agreement": 1.0, "kl": 0.0},
        {"policy": "streaming", "budget": 256, "kv_dtype": "int8", "ppl": 12.5, "top1_agreement": 0.8, "kl": 0.3},
    ]).to_csv(quality, index=False)
    out = tmp_path / "cmp"
    records = kvsim_json("compare", *SMALL, "--policies", "full,streaming", "--kv-dtypes", "fp16,int8",
                         "--budgets", "256", "--jobs", "1", "--quality", quality, "--out", out)
    assert [(r["policy"], r["kv_dtype"]) for r in records] == [
        ("full", "fp16"), ("full", "int8"), ("streaming", "fp16"), ("streaming", "int8")]
    for r in records:
        check_record(r)
    by = {(r["policy"], r["kv_dtype"]): r for r in records}
    assert by["full", "fp16"]["ppl"] == 10.0 and by["streaming", "int8"]["kl"] == 0.3
    assert by["full", "int8"]["ppl"] is None  # no such row in quality.csv: left empty
    # INT8 holds about twice the blocks of fp16 in the same memory; eviction lowers the peak
    assert 1.9 < by["full", "int8"]["num_blocks"] / by["full", "fp16"]["num_blocks"] < 2.0
    # (both may fill this tiny cache; the evicting one then preempts less)
    assert by["streaming", "fp16"]["peak_kv_blocks"] <= by["full", "fp16"]["peak_kv_blocks"]
    assert by["streaming", "fp16"]["preemptions"] < by["full", "fp16"]["preemptions"]
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 4 and {"ppl", "top1_agreement", "kl", "output_tokens_per_s"} <= set(summary.columns)
    assert set(pd.read_parquet(out / "requests.parquet").point) == {r["point"] for r in records}
    assert (out / "plots" / "quality_vs_budget.png").is_file()


def test_compare_quality_file_with_wrong_columns(tmp_path):
    bad = tmp_path / "quality.csv"
    bad.write_text("policy,ppl\nfull,3\n")
    one_line_error(kvsim("compare", *SMALL, "--policies", "full", "--kv-dtypes", "fp16", "--jobs", "1",
                         "--quality", bad, "--out", tmp_path / "x"), "missing columns", "kv_dtype")


def test_report_rebuilds_from_the_tables(tmp_path):
    out = tmp_path / "run"
    kvsim_json("replay", *SMALL, "--no-report", "--out", out)
    assert not (out / "report.html").exists()
    done = kvsim("report", out)
    assert done.returncode == 0, done.stderr
    assert (out / "report.html").is_file() and (out / "plots" / "kv_blocks.png").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests_submitted"] == 100
    one_line_error(kvsim("report", tmp_path), "not a kvsim run directory")
