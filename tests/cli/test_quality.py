"""`kvsim quality` end to end on tiny settings (the real SmolLM2 on the CPU), and its errors."""

from __future__ import annotations

import pandas as pd

from tests.cli.conftest import kvsim, kvsim_json, one_line_error


def test_quality_writes_tables_and_plots(tmp_path):
    out = tmp_path / "q"
    rows = kvsim_json("quality", "--policies", "full,streaming,window", "--budgets", "24", "--kv-dtypes", "fp16,int8",
                      "--max-tokens", "48", "--prefill-tokens", "16", "--passkey-lengths", "80",
                      "--passkey-depths", "0,1", "--out", out, timeout=900)
    assert {(r["policy"], r["kv_dtype"]) for r in rows} == {(p, d) for p in ("full", "streaming", "window")
                                                            for d in ("fp16", "int8")}
    for name in ("quality.csv", "quality.parquet", "passkey.csv", "quality.json", "ppl_vs_budget.png",
                 "agreement_vs_budget.png", "passkey.png"):
        assert (out / name).is_file(), name
    df = pd.read_csv(out / "quality.csv")
    full = df[(df.policy == "full") & (df.kv_dtype == "fp16")].iloc[0]
    assert full.top1_agreement == 1.0 and abs(full.kl) < 1e-3 and full.ppl > 1
    window = df[(df.policy == "window") & (df.kv_dtype == "fp16")].iloc[0]
    assert window.positions == 47 - 24  # predicted positions 16..47; counted: those past the 24-token budget
    passkey = pd.read_csv(out / "passkey.csv")
    assert len(passkey) == 3 * 2 and set(passkey.depth) == {0.0, 1.0}
    assert passkey[passkey.policy == "full"].correct.all()  # the full cache finds the key


def test_quality_bad_input():
    one_line_error(kvsim("quality", "--policies", "full,h3o"), "--policies: unknown h3o", "known: full")
    one_line_error(kvsim("quality", "--kv-dtypes", "int8"), "must include fp16")
