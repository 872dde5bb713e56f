"""calc (the arithmetic, checked by hand), model list, and a tiny compute-mode replay."""

from __future__ import annotations

import pytest

from conftest import kvsim, kvsim_json, without_wall_time


def test_calc_numbers():
    out = kvsim_json("calc", "--model", "smollm2-135m", "--context", "1024", "--batch", "2",
                     "--kv-dtypes", "fp16,int8,int4", "--window", "256", "--top-k", "128")
    kv = {(r["kv_heads"], r["kv_dtype"]): r for r in out["kv"]}
    # SmolLM2: 30 layers, 9 query heads, 3 KV heads, head_dim 64
    assert set(kv) == {(h, d) for h in (9, 3, 1) for d in ("fp16", "int8", "int4")}
    assert kv[3, "fp16"]["bytes_per_token"] == 30 * 2 * 3 * 64 * 2
    assert kv[3, "int8"]["bytes_per_token"] == 30 * 2 * 3 * (64 + 2)
    assert kv[3, "int4"]["bytes_per_token"] == 30 * 2 * 3 * (32 + 2)
    assert [kv[h, "fp16"]["attention"] for h in (9, 3, 1)] == ["MHA", "GQA*", "MQA"]
    assert kv[3, "fp16"]["kv_bytes_full"] == 2 * 1024 * 23040
    assert kv[3, "fp16"]["kv_bytes_window"] == 2 * 256 * 23040 and kv[3, "fp16"]["kv_bytes_top-k"] == 2 * 128 * 23040
    att = {r["cache"]: r for r in out["attention"]}
    unit = 4 * 64 * 9 * 30
    assert att["full"]["prefill_attn_flops"] == 2 * unit * 1024 * 1025 // 2
    assert att["window 256"]["prefill_attn_flops"] == 2 * unit * (256 * 257 // 2 + (1024 - 256) * 256)
    assert att["top-k 128"]["prefill_attn_flops"] == att["full"]["prefill_attn_flops"]  # it scores every pair
    assert att["full"]["score_matrix_elems_per_head"] == 1024 ** 2
    assert att["full"]["score_matrix_bytes_layer_fp32"] == 2 * 9 * 1024 ** 2 * 4
    assert att["top-k 128"]["decode_attn_flops_per_token"] == 2 * unit * 128


def test_calc_table_and_bad_heads():
    done = kvsim("calc", "--model", "llama-2-7b", "--context", "4096,8192")
    assert done.returncode == 0 and "MHA*" in done.stdout and "window 4096" in done.stdout
    bad = kvsim("calc", "--model", "llama-3.1-8b", "--kv-heads", "5")
    assert bad.returncode == 2 and "must divide the 32 query heads" in bad.stderr


def test_model_list():
    done = kvsim("model", "list")
    assert done.returncode == 0 and "smollm2-135m" in done.stdout and "llama-3.1-70b" in done.stdout


@pytest.mark.slow
def test_compute_backend_replays_like_analytic(tmp_path):
    """The real model on the CPU (3 short requests, streaming eviction to 24 tokens): the same
    schedule, and so the same timings (the cost model's, on a CPU), as the analytic backend."""
    from engine import hub

    hub.pull("smollm2-135m")  # once per machine: the CLI below then loads it from the cache
    trace = tmp_path / "tiny.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(
        f"2023-11-16 18:15:46.00{i},{p},{o}" for i, (p, o) in enumerate([(30, 5), (20, 4), (50, 3)])))
    common = [trace, "--kv-blocks", "16", "--block-size", "8", "--no-progress", "--no-report", "--kv-dtype", "fp32",
              "--policy", "streaming", "--budget", "24"]
    compute = kvsim_json("replay", *common, "--backend", "compute", "--out", tmp_path / "c")
    analytic = kvsim_json("replay", *common, "--backend", "analytic", "--out", tmp_path / "a")
    assert compute.pop("backend") == "compute" and analytic.pop("backend") == "analytic"
    assert without_wall_time(compute) == without_wall_time(analytic)
    assert compute["requests_completed"] == 3 and compute["evicted_tokens"] > 0
