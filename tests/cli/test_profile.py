"""`kvsim profile` on the CPU (--allow-cpu, a tiny random model, a tiny grid): the file it writes,
what the cost model makes of it, the budget guard, and the refusal without a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import kvsim, kvsim_json

from engine.calibrated import CalibratedCostModel
from engine.cost_model import CostModel, cost_model_for
from engine.gpus import get_gpu
from engine.profile import ProfileGrid
from engine.profile_file import SHAPE_FIELDS, TABLES, load_profile
from kvsim.cli import main
from kvsim.commands.profile import model_shape

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 2048}
GRID = {"batches": (1, 2, 4), "contexts": (16, 48), "prefill_tokens": (8, 32), "prefill_cached": (0, 32)}
ARGS = ["--allow-cpu", "--gpu", "h100", "--batches", "1,2,4", "--contexts", "16,48", "--prefill-tokens", "8,32",
        "--prefill-cached", "0,32", "--warmup", "0", "--reps", "1"]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="these check the CPU-only path")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def measured(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "tiny_h100.json"
    done = kvsim("profile", "--model", tiny, "--kv-dtypes", "fp32,int8", *ARGS, "--scatter-gib", "0.001", "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}" in done.stdout and "fp32: calibrated" in done.stderr
    return out


def points(table: dict) -> set:
    return set(zip(*(table[c] for c in table if c != "time_s")))


@no_gpu
def test_file_records_device_versions_shape_and_grid(measured, tiny):
    profile = load_profile(measured)  # validates the whole structure
    data, cfg = profile.data, model_shape(str(tiny))
    assert (data["gpu"], data["timer"], data["block_size"]) == ("h100", "perf_counter", 16)
    assert data["device_name"].startswith("cpu") and data["versions"]["torch"] == torch.__version__
    assert data["model"] == {"name": "tiny", **{f: getattr(cfg, f) for f in SHAPE_FIELDS}}
    assert data["settings"]["grid"]["batches"] == [1, 2, 4] and data["memory"]["copy_bytes_per_s"] > 0
    assert data["settings"]["block_tables"].startswith("scattered: the first 0.001 GiB")
    grid = ProfileGrid(**GRID)
    for kv in ("fp32", "int8"):
        tables = profile.tables(kv)
        serving = {"serving_steps", "serving_scored_steps"}  # none on the CPU by default
        assert set(TABLES) - {"decode_overhead", "prefill_decode_rows", *serving} <= set(tables)
        assert not serving & set(tables) and profile.missing(kv) == []
        assert points(tables["decode_step"]) == {(b, c) for b in (1, 2, 4) for c in (16, 48)}
        assert points(tables["prefill_step"]) == {(n, s) for n in (8, 32) for s in (0, 32)}
        assert points(tables["mixed_step"]) == set(grid.mixed())
        assert points(tables["decode_attention_skew"]) == {(b, 48) for b in (2, 4)}
        assert points(tables["lm_head_sample"]) == {(1,), (2,), (4,)}
        assert points(tables["table_width"]) == set(grid.widths(16)) == {(n, b, 16) for n in (0, 32) for b in (1, 4)}
        random = tables["random_steps"]  # 2 decode-only and 2 with prefill on the CPU, seeded
        assert len(random["time_s"]) == 4 and sum(c > 0 for c in random["chunks"]) == 2
        assert max(random["batch"]) <= 4 and max(random["context_max"]) <= 48
        assert all(n + b <= 2048 for n, b in zip(random["chunk_tokens"], random["batch"]))
        scored = tables["scored_steps"]  # the same kinds of step, other compositions, keeping scores
        assert len(scored["time_s"]) == 4 and sum(c > 0 for c in scored["chunks"]) == 2
        assert points(scored) != points(random)
        assert all(t > 0 for name, table in tables.items() if name != "decode_overhead" for t in table["time_s"])
    assert data["kv_dtypes"]["int8"]["kv_bytes_per_token"] < data["kv_dtypes"]["fp32"]["kv_bytes_per_token"]


@no_gpu
def test_cost_model_reads_the_measured_profile(measured, tiny):
    cfg = model_shape(str(tiny))
    cost = cost_model_for(cfg, get_gpu("h100"), "fp32", profile=measured)
    assert isinstance(cost, CalibratedCostModel) and cost.source.startswith("calibrated profile tiny_h100.json (cpu")
    from engine.cost_model import StepShape

    table = load_profile(measured).tables("fp32")
    assert cost.correction.weights == {}  # 2 random steps a kind are too few to fit: the sum is kept
    for b, c, t in zip(*table["decode_step"].values()):  # exact where measured (floored at the fastest)
        shape = StepShape(b, b, b * c, num_decode_seqs=b, decode_max_context=c)
        assert cost.step_time(shape) == pytest.approx(max(t, cost.floor_s), rel=1e-9)
        assert cost.structural(shape) == pytest.approx(t, rel=1e-9)
    for n, s, t in zip(*table["prefill_step"].values()):
        shape = StepShape(n, 1, prefill_chunks=((s, n),))
        assert cost.step_time(shape) == pytest.approx(max(t, cost.floor_s), rel=1e-9)
    fp16 = cost_model_for(cfg, get_gpu("h100"), "fp16", profile=measured)  # not profiled
    assert type(fp16) is CostModel and "lacks fp16 tables" in fp16.source


@no_gpu
def test_budget_stops_adding_points_and_still_writes(tiny, tmp_path, capsys):
    out = tmp_path / "cut.json"
    assert main(["profile", "--model", str(tiny), "--kv-dtypes", "fp32", *ARGS, "--budget-s", "0.001",
                 "--out", str(out)]) == 0
    assert "fp32: lacks decode_step" in capsys.readouterr().err
    entry = json.loads(out.read_text())["kv_dtypes"]["fp32"]
    assert entry["tables"] == {} and entry["skipped"]["decode_step"] == {"budget": 6}
    cost = cost_model_for(model_shape(str(tiny)), get_gpu("h100"), "fp32", profile=out)
    assert type(cost) is CostModel and "lacks fp32 tables decode_step" in cost.source


@no_gpu
@pytest.mark.parametrize("args, fragments", [
    ([], ["no CUDA GPU is present", "--allow-cpu"]),
    (["--allow-cpu"], ["--gpu: name the GPU preset"]),
    (["--allow-cpu", "--gpu", "tpu"], ["--gpu: 'tpu' is not one of"]),
    (["--allow-cpu", "--gpu", "h100", "--batches", "0"], ["--batches: must be >= 1"]),
])
def test_refusals_are_one_line(tiny, args, fragments, capsys):
    assert main(["profile", "--model", str(tiny), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kvsim: error: ")
    assert all(f in err[0] for f in fragments), err[0]


def test_replay_reports_the_calibrated_profile(tmp_path):
    from tests.engine.test_cost_model import write_profile

    path = write_profile(tmp_path)  # synthetic tables for smollm2-135m on the h100
    args = ["replay", "--max-requests", "30", "--rate-scale", "20", "--kv-mem-gib", "0.05", "--no-progress",
            "--no-report", "--out", tmp_path / "run"]
    record = kvsim_json(*args, env={"KVSIM_PROFILES": str(path)})
    assert record["cost_model"] == "calibrated profile smollm2-135m_h100.json (synthetic (test), 2026-01-01)"
    # the synthetic decode steps take 1 ms + 2 us a sequence + 0.3 ns a token read: no TPOT is shorter
    assert 1.0 <= record["tpot_ms_p50"] < 1.5


def test_a_spike_is_measured_again_and_the_lower_time_kept():
    from engine.profile_run import _run_section

    class Fits:
        fits = staticmethod(lambda seq_lens: True)

    calls = {}

    def point(b, c, first, again):
        def measure():
            calls[(b, c)] = calls.get((b, c), 0) + 1
            return first if calls[(b, c)] == 1 else again
        return (b, c), [c] * b, measure

    pts = [point(1, 128, 1.0, 1.0), point(1, 256, 5.0, 1.1), point(1, 512, 1.2, 1.2), point(1, 1024, 9.0, 9.5)]
    section = _run_section("decode_step", pts, Fits(), deadline=float("inf"), log=lambda line: None)
    assert section.rows["time_s"] == [1.0, 1.1, 1.2, 9.0]  # the last point has one neighbour: not a spike
    assert section.remeasured == [[1, 256, 5.0]] and calls == {(1, 128): 1, (1, 256): 2, (1, 512): 1, (1, 1024): 1}


def test_a_wide_table_pads_one_row_as_serving_does():
    """table_width steps: the last sequence's table is the width (its entries past the length are
    never read); the other rows keep their own tables, which the runner pads with zeros."""
    from engine.config import PRESETS
    from engine.loader import random_model
    from engine.profile import StepBench

    cfg = PRESETS["smollm2-135m"]
    small = type(cfg)(**{**vars(cfg), "num_layers": 1, "name": "one-layer"})
    bench = StepBench(random_model(small), "fp16", 16, want_blocks=64)
    batch = bench.inputs([40, 20, 33], [1, 1, 1], width=8)
    assert [len(s.block_table) for s in batch] == [3, 2, 8]
    assert batch[2].block_table[:3] == [5, 6, 7] and batch[2].block_table[3:] == [7] * 5
    assert [s.slots for s in batch] == [[2 * 16 + 7], [4 * 16 + 3], [7 * 16]]  # each writes its last position


SERVING_TRACE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,40,4\n"
                 "2023-11-16 18:15:50.68,70,3\n2023-11-16 18:15:51.68,20,5\n")


@no_gpu
def test_serving_steps_are_measured_recorded_and_fitted(tmp_path):
    """--serving-requests: a slice of a trace served in compute mode (full, then H2O) per KV dtype,
    every step a row of serving_steps / serving_scored_steps (on the CPU timed by perf_counter, as
    the rest of a CPU profile); the settings say which rows, and the cost model fits them with the
    random steps (it keeps a row of each)."""
    trace = tmp_path / "trace.csv"
    trace.write_text(SERVING_TRACE)
    out = tmp_path / "served.json"
    done = kvsim("profile", "--model", "smollm2-135m", "--kv-dtypes", "fp32", *ARGS, "--batches", "1,2",
                 "--serving-requests", "2", "--serving-offset", "1", "--serving-trace", trace, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    data = load_profile(out).data
    assert data["settings"]["serving_steps"] == {
        "trace": "trace.csv", "shipped": False, "rows": [1, 3], "rate_scale": 40.0,
        "policies": {"serving_steps": ["full", "streaming"], "serving_scored_steps": ["h2o"]}, "budget_tokens": 512,
        "kv_mem_gib": 4.0}
    entry = data["kv_dtypes"]["fp32"]
    for name, policies in (("serving_steps", ["full", "streaming"]), ("serving_scored_steps", ["h2o"])):
        table, notes = entry["tables"][name], entry["serving"][name]
        assert list(notes) == policies and all(n["requests_completed"] == 2 for n in notes.values())
        assert sum(n["steps"] for n in notes.values()) == len(table["time_s"]) > 2 * len(policies)
        # rows 1-2: their prompts prefilled (70 + 20 tokens) once a policy, in one step at 40x or several
        assert sum(table["chunk_tokens"]) == 90 * len(policies) and all(t > 0 for t in table["time_s"])
        assert set(table) == set(TABLES[name])
    cost = cost_model_for(model_shape("smollm2-135m"), get_gpu("h100"), "fp32", profile=out)
    from engine.profile_file import row_shape
    from engine.calibrated import Correction

    served = [row_shape(dict(zip(t, values)), name == "serving_scored_steps")
              for name in ("serving_steps", "serving_scored_steps")
              for t in [entry["tables"][name]] for values in zip(*t.values())]
    assert {Correction.key(s) for s in served} <= cost.correction.fitted


def test_serving_rows_start_at_the_offset():
    """The package's trace is served from SERVING_OFFSET unless told (another trace from row 0); the
    arrival window starts at that row's arrival."""
    from kvsim.profile_serving import SERVING_OFFSET, serving_offset, serving_window
    from workloads import DEFAULT_TRACE, read_trace

    assert serving_offset(None, None) == SERVING_OFFSET == 750 and serving_offset("t.csv", None) == 0
    assert serving_offset(None, 0) == 0 and serving_window(None, 0) is None
    arrivals = read_trace(DEFAULT_TRACE).requests["arrival_s"]
    start, end = serving_window(None, 750)
    assert start == arrivals.iloc[750] and end > arrivals.max() and (arrivals < start).sum() == 750


@no_gpu
def test_serving_requests_refusals(tiny, capsys):
    assert main(["profile", "--model", str(tiny), *ARGS, "--serving-requests", "-1"]) == 2
    assert "--serving-requests: must be >= 0" in capsys.readouterr().err
    assert main(["profile", "--model", str(tiny), *ARGS, "--serving-trace", "/nonexistent.csv"]) == 2
    assert "--serving-trace /nonexistent.csv: no such file" in capsys.readouterr().err
    assert main(["profile", "--model", str(tiny), *ARGS, "--serving-offset", "-1"]) == 2
    assert "--serving-offset: must be >= 0" in capsys.readouterr().err
    assert main(["profile", "--model", str(tiny), *ARGS, "--serving-requests", "5", "--serving-offset", "5000"]) == 2
    assert "--serving-offset 5000: the trace has 2000 requests" in capsys.readouterr().err


@no_gpu
def test_random_and_scored_step_counts_override_the_grid(tiny, capsys):
    """--random-steps / --scored-steps set the seeded compositions a kind (a large model's budget can
    then leave time for the scored ones); unset, the grid's (or --quick's) counts stay."""
    from engine.profile import QUICK
    from kvsim.commands.profile import Config, grid_of

    grid = grid_of(Config(random_steps=120, scored_steps=0))
    assert (grid.random_steps, grid.scored_steps) == (120, 0)
    assert grid.batches == ProfileGrid().batches  # the rest of the grid as it was
    quick = grid_of(Config(quick=True, scored_steps=40))
    assert (quick.random_steps, quick.scored_steps) == (QUICK.random_steps, 40)
    assert main(["profile", "--model", str(tiny), *ARGS, "--random-steps", "-2"]) == 2
    assert "--random-steps: must be >= 0, got -2" in capsys.readouterr().err
    assert main(["profile", "--model", str(tiny), *ARGS, "--scored-steps", "-1"]) == 2
    assert "--scored-steps: must be >= 0, got -1" in capsys.readouterr().err
