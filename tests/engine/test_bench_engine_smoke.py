"""bench/engine.py's smoke mode end to end on the CPU: tiny random models, every section of the
GPU run (our decode rows, "does not fit", HF generate on shared weights, floors, gates, the
budget guard) and the JSON it writes. A smoke test of the script, not a timing."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from bench import engine as bench_engine  # noqa: E402

ROW_KEYS = {"step_ms", "host_ms", "pipelined_ms", "tok_s", "kv_bytes_read", "weight_bytes_read", "floor_ms",
            "x_floor", "steps_timed", "gates"}


def test_smoke_run_writes_every_row(tmp_path):
    s = bench_engine.smoke_settings(str(tmp_path))
    s.hf_batches = {"tiny-tied": (4,)}  # one HF row and few steps keep the test short
    s.warmup_steps, s.timed_steps, s.pipelined_steps = 1, 3, 1
    bench_engine.run(s)
    result = json.loads((tmp_path / "engine_smoke.json").read_text())

    assert result["benchmark"] == "engine" and result["device"] == "cpu (smoke test)" and "date" in result
    assert result["copy"]["gb_per_s"] > 0
    for name in s.models:
        info = result["models"][name]
        assert info["status"] == "ok" and info["weight_bytes"] > 0 and info["weight_dtype"] == "bfloat16"
    twin = result["models"]["tiny-tied"]
    assert twin["hf"]["weights_shared"] and twin["hf_check"]["max_abs_logit_diff"] < 0.05

    rows = {(r["model"], r["kv"], r["batch"], r["ctx"]): r for r in result["rows"]}
    assert len(rows) == len(result["rows"]) == 2 * 2 * 2 * 2
    for key, r in rows.items():
        _, kv, batch, ctx = key
        if kv == "bf16" and batch == 4 and ctx == 80:  # the KV capacity leaves the largest float row out
            assert r["status"] == "does not fit" and r["kv_need_gib"] > r["kv_capacity_gib"]
            continue
        assert r["status"] == "ok", r
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert r["steps_timed"] == s.timed_steps and 0 < r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"]
        assert r["tok_s"] == pytest.approx(batch / r["step_ms"] * 1e3)
        assert r["x_floor"] == pytest.approx(r["step_ms"] / r["floor_ms"]) and r["floor_ms"] > 0
        slots = ctx + s.warmup_steps + (s.timed_steps + 1) / 2
        assert r["kv_bytes_read"] == pytest.approx(batch * slots * r["kv_bytes_per_token"])
    assert rows[("tiny-tied", "int8", 1, 32)]["kv_bytes_per_token"] < rows[("tiny-tied", "bf16", 1, 32)]["kv_bytes_per_token"]
    # an untied embedding table is read only for the batch's rows
    untied = [rows[("tiny-llama3", "bf16", b, 32)]["weight_bytes_read"] for b in (1, 4)]
    assert untied[1] - untied[0] == 3 * result["models"]["tiny-llama3"]["embedding_row_bytes"]

    (hf,) = result["hf"]
    assert hf["status"] == "ok" and hf["tok_s"] > 0 and hf["new_tokens"] == s.hf_new_tokens
    assert rows[("tiny-tied", "bf16", 4, 32)]["x_hf"] == pytest.approx(rows[("tiny-tied", "bf16", 4, 32)]["tok_s"] / hf["tok_s"])

    gates = {(g["gate"], g["model"]): g for g in result["gates"]}
    assert isinstance(gates[("step<=1.25x floor", "tiny-llama3")]["pass"], bool)
    assert gates[("step<=2x floor", "tiny-tied")]["pass"] is None  # its row does not fit
    assert isinstance(gates[("tok/s>=5x HF", "tiny-tied")]["pass"], bool)


def test_budget_skips_rows(tmp_path):
    s = bench_engine.smoke_settings(str(tmp_path))
    s.budget_s = 0.0
    result = bench_engine.run(s)
    assert result["rows"] and {r["status"] for r in result["rows"]} == {"skipped (budget)"}
    assert json.loads((tmp_path / "engine_smoke.json").read_text())["rows"] == result["rows"]
