"""bench/warm_state.py on the CPU: capped batches as an evicting policy keeps them, and the JSON the
script writes (every step in every state). A smoke test of the script, not a timing."""

from __future__ import annotations

import json

from bench import warm_state


def test_capped_contexts_sit_at_or_under_the_cap():
    lens = warm_state.capped(200, 512, seed=7)
    assert len(lens) == 200 and max(lens) == 512 and min(lens) >= 16
    assert 0.3 < sum(n == 512 for n in lens) / 200 < 0.7  # lognormal about the cap: about half clipped to it
    assert lens == warm_state.capped(200, 512, seed=7) and lens != warm_state.capped(200, 512, seed=8)


def test_smoke_run_times_every_step_in_every_state(tmp_path):
    out = tmp_path / "warm.json"
    warm_state.main(["--device", "cpu", "--points", "3x40", "--mixed", "2x24", "--step-tokens", "10",
                     "--load-s", "0.05", "--idle-s", "0", "--reps", "1", "--kv-dtype", "fp32", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["benchmark"] == "warm_state" and list(result["states"]) == list(warm_state.STATES)
    names = set(result["states"]["cold"]["step_s"])
    assert {"uniform 3x40", "mixed 2x24 + 8"} <= names and any(n.startswith("capped 3x40 ") for n in names)
    for state in warm_state.STATES:
        assert set(result["states"][state]["step_s"]) == names
        assert all(t > 0 for t in result["states"][state]["step_s"].values())
    assert result["hot_load_steps"] >= 1 and result["hot_again_load_steps"] >= 1
