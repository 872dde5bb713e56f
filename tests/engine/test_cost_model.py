"""The calibrated cost model and its profile files: interpolation, composition, fallback, errors.

Synthetic profiles here are tables of known functions (so every prediction has an exact expected
value); tests/cli/test_profile.py measures a real one on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.calibrated import CalibratedCostModel, Correction, Curve
from engine.config import PRESETS
from engine.cost_model import CostModel, StepShape, cost_model_for
from engine.gpus import get_gpu
from engine.buckets import scored_split
from engine.profile_file import (
    FORMAT,
    SCORED_DECODE_ROWS,
    SHAPE_FIELDS,
    VERSION,
    ProfileError,
    find_profile,
    load_profile,
)
from kernels.decode_config import decode_walk

MODEL = PRESETS["smollm2-135m"]
H100 = get_gpu("h100")
BATCHES, CONTEXTS = (1, 2, 4, 8, 16, 32), (128, 256, 512, 1024, 2048)
TOKENS, CACHED = (16, 32, 64, 128, 256, 1024), (0, 1024, 4096)
MIXED = [(256, 0, 8, 512), (64, 1024, 16, 256), (1024, 0, 4, 1024)]


# known functions, in seconds (bilinear ones are reproduced exactly by the interpolation)
def decode_step(b, c):
    return 1e-3 + 2e-6 * b + 3e-10 * b * c


def prefill_step(n, s):
    return 2e-3 + 1e-6 * n + 2e-11 * n * s


def prefill_attention(n, s):  # per layer; causal: n * s + n^2 / 2 pairs
    return 1e-6 + 1e-12 * (n * s + n * n / 2)


def decode_attention(b, c):
    return 1e-6 + 1e-11 * b * c


def walk_time(keys):  # one program's walk over `keys` keys of one sequence
    return 1e-6 + 1e-10 * keys


def walk(rows, width, longest):  # keys that program walks: the kernel's split of the longest sequence
    return decode_walk(rows, MODEL.num_kv_heads, width * 16, longest, MODEL.head_dim, 2, H100.num_sms)


def skew(b, c):  # one sequence at c among one-block ones, tables as wide as it: its own walk
    return walk_time(walk(b, -(-c // 16), c))


def head(r):
    return 1e-5 + 1e-7 * r


def _table(fn, *axes, names):
    points = [(a, b) for a in axes[0] for b in axes[1]] if len(axes) == 2 else [(a,) for a in axes[0]]
    cols = {name: [p[i] for p in points] for i, name in enumerate(names)}
    cols["time_s"] = [fn(*p) for p in points]
    return cols


def profile_data(model=MODEL, gpu="h100", kv_dtypes=("fp16",), mixed_times=None) -> dict:
    tables = {
        "decode_step": _table(decode_step, BATCHES, CONTEXTS, names=("batch", "context")),
        "prefill_step": _table(prefill_step, TOKENS, CACHED, names=("tokens", "cached")),
        "prefill_attention": _table(prefill_attention, TOKENS, CACHED, names=("tokens", "cached")),
        "decode_attention": _table(decode_attention, BATCHES, CONTEXTS, names=("batch", "context")),
        "decode_attention_skew": _table(skew, BATCHES[1:], CONTEXTS, names=("batch", "context")),
        "lm_head_sample": _table(head, BATCHES, names=("rows",)),
    }
    if mixed_times:
        tables["mixed_step"] = {"tokens": [m[0] for m in MIXED], "cached": [m[1] for m in MIXED],
                                "batch": [m[2] for m in MIXED], "context": [m[3] for m in MIXED],
                                "time_s": mixed_times}
    return {"format": FORMAT, "version": VERSION, "gpu": gpu, "device_name": "synthetic (test)", "timer": "none",
            "date": "2026-01-01T00:00:00+00:00", "block_size": 16,
            "model": {"name": model.name, **{f: getattr(model, f) for f in SHAPE_FIELDS}},
            "memory": {"copy_bytes_per_s": 1e12, "host_to_device_bytes_per_s": 5e10},
            "kv_dtypes": {kv: {"tables": tables} for kv in kv_dtypes}}


def write_profile(folder, data=None, name=None):
    data = data or profile_data()
    path = folder / (name or f"{data['model']['name']}_{data['gpu']}.json")
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def calibrated(tmp_path, monkeypatch):
    monkeypatch.setenv("KVSIM_PROFILES", str(write_profile(tmp_path)))
    cost = cost_model_for(MODEL, H100, "fp16")
    assert isinstance(cost, CalibratedCostModel)
    return cost


def decode(contexts) -> StepShape:
    b = len(contexts)
    return StepShape(b, b, sum(contexts), num_decode_seqs=b, decode_max_context=max(contexts))


def prefill(chunks, decode_contexts=()) -> StepShape:
    b = len(decode_contexts)
    return StepShape(sum(n for _, n in chunks) + b, len(chunks) + b, sum(decode_contexts), num_decode_seqs=b,
                     decode_max_context=max(decode_contexts, default=0), prefill_chunks=tuple(chunks))


def test_exact_at_grid_points(calibrated):
    for b in BATCHES:
        for c in CONTEXTS:
            assert calibrated.step_time(decode([c] * b)) == pytest.approx(decode_step(b, c), rel=1e-12)
    for n in TOKENS:
        for s in CACHED:
            assert calibrated.step_time(prefill([(s, n)])) == pytest.approx(prefill_step(n, s), rel=1e-12)


def test_between_grid_points_bilinear_is_exact_and_monotone(calibrated):
    # decode_step is bilinear in (batch, context): interpolation reproduces it off the grid too
    for b, c in [(3, 300), (5, 700), (24, 1500), (12, 129)]:
        assert calibrated.step_time(decode([c] * b)) == pytest.approx(decode_step(b, c), rel=1e-9)
    times = [calibrated.step_time(decode([c] * 6)) for c in range(256, 513, 16)]
    assert times == sorted(times) and times[0] < times[-1]
    # prefill attention is quadratic in n: between points the chord lies within its neighbours
    low, high = prefill_step(64, 0), prefill_step(256, 0)
    between = [calibrated.step_time(prefill([(0, n)])) for n in range(64, 257, 32)]
    assert between == sorted(between) and low <= min(between) and max(between) <= high


def test_extrapolation(calibrated):
    # past the grid: the end segments continue (linear functions stay exact)
    assert calibrated.step_time(decode([8192] * 32)) == pytest.approx(decode_step(32, 8192), rel=1e-9)
    assert calibrated.step_time(decode([1024] * 64)) == pytest.approx(decode_step(64, 1024), rel=1e-9)
    assert calibrated.step_time(prefill([(8192, 1024)])) == pytest.approx(prefill_step(1024, 8192), rel=1e-9)
    # below it: down along the first segment, never below zero or the fastest measured step
    short = calibrated.step_time(decode([16]))
    assert decode_step(1, 128) * 0.99 <= short <= decode_step(1, 128)
    # a segment that falls is not continued downwards, and nothing goes below 0
    curve = Curve([1, 2, 3], [1.0, 3.0, 2.0])
    assert curve(10) == 2.0 and curve(0) == 0.0 and curve(2.5) == 2.5
    assert Curve([1, 1, 2], [1.0, 3.0, 4.0])(1) == 2.0  # repeated points are averaged


def test_each_decode_sequence_counts_not_the_mean(calibrated):
    uniform = calibrated.step_time(decode([512] * 4))
    # the same KV bytes (mean 512) with one long sequence: its own walk (the skew table) bounds the step
    # (split by the kernel's rule for 4 rows and a 128-block table)
    skewed = calibrated.step_time(decode([1952, 32, 32, 32]))
    assert walk(4, 128, 1952) < 1952  # split, but not past the batch's bytes
    expected = decode_step(4, 512) + MODEL.num_layers * (walk_time(walk(4, 128, 1952)) - decode_attention(4, 512))
    assert skewed == pytest.approx(expected, rel=1e-9) and skewed > uniform
    # the longest walk is the kernel's split, from the launch's rows: more rows, fewer splits, a longer walk
    assert walk(32, 128, 1952) > walk(4, 128, 1952)
    # when the batch's bytes dominate, the longest sequence adds nothing: the sum decides
    wide = [2048] + [2000] * 31
    assert calibrated.step_time(decode(wide)) == pytest.approx(decode_step(32, sum(wide) / 32), rel=1e-9)


def test_chunks_and_mixed_steps_are_a_calibrated_sum(calibrated, tmp_path, monkeypatch):
    layers = MODEL.num_layers
    # two chunks: the linear part of all their tokens and one attention launch whose query tiles run
    # in parallel: it takes the longest chunk's attention (the one reading 1024 cached keys), plus
    # what that cached context adds to a measured step beyond its attention
    two = calibrated.step_time(prefill([(0, 64), (1024, 64)]))
    extra = prefill_step(64, 1024) - prefill_step(64, 0) - layers * (prefill_attention(64, 1024) - prefill_attention(64, 0))
    assert two == pytest.approx(prefill_step(128, 0) + layers * (prefill_attention(64, 1024) - prefill_attention(128, 0))
                                + extra + head(2) - head(1), rel=1e-9)
    # no cached context: the longest chunk's attention, or the chunks' causal pairs at the time per pair
    # of the most parallel launch measured (the longest uncached chunk, 1024 tokens), whichever is longer
    pair_s = prefill_attention(1024, 0) / (1024 * 1025 / 2)
    assert calibrated.pair_s == pytest.approx(pair_s, rel=1e-12)
    fresh = prefill([(0, 128), (0, 128)])
    pairs = 2 * 128 * 129 // 2
    assert pairs * pair_s < prefill_attention(128, 0)  # the launch overhead of the longest chunk dominates here
    assert calibrated.step_time(fresh) == pytest.approx(
        prefill_step(256, 0) + layers * (prefill_attention(128, 0) - prefill_attention(256, 0)) + head(2) - head(1), rel=1e-9)
    calibrated.pair_s = 1e-9  # a slower causal rate: the pairs bound the launch
    assert calibrated.step_time(fresh) == pytest.approx(
        prefill_step(256, 0) + layers * (pairs * 1e-9 - prefill_attention(256, 0)) + head(2) - head(1), rel=1e-9)
    calibrated.pair_s = pair_s
    # chunks with context are not summed: two chunks each reading 4096 keys cost one's extra
    both = calibrated.step_time(prefill([(4096, 64), (4096, 64)]))
    assert both == pytest.approx(prefill_step(128, 0) + layers * (prefill_attention(64, 4096) - prefill_attention(128, 0))
                                 + prefill_step(64, 4096) - prefill_step(64, 0)
                                 - layers * (prefill_attention(64, 4096) - prefill_attention(64, 0)) + head(2) - head(1),
                                 rel=1e-9)
    # decode rows in a mixed step run in the decode kernel: its per-layer time joins the sum, with what
    # the rows add to a decode step beyond attention and the head (the decode_step table at 128 tokens)
    mixed = [prefill([(s, n)], [c] * b) for n, s, b, c in MIXED]
    rows = lambda b: decode_step(b, 128) - decode_step(1, 128) - layers * (decode_attention(b, 128)
                                                                           - decode_attention(1, 128)) - head(b) + head(1)
    n, s, b, c = MIXED[0]
    assert calibrated.rows(b) == pytest.approx(rows(b), rel=1e-9) and rows(b) > 0
    assert calibrated.step_time(mixed[0]) == pytest.approx(
        prefill_step(n + b, 0) + layers * (prefill_attention(n, 0) - calibrated.prefill_attn(0, n + b)
                                           + decode_attention(b, c)) + head(1 + b) - head(1) + rows(b), rel=1e-9)
    # measured mixed steps (the mixed_step table) no longer move the sum: checks only
    sums = [calibrated.step_time(shape) for shape in mixed]
    fitted = with_mixed(tmp_path, monkeypatch, [t + extra for t, extra in zip(sums, [5e-4, 1e-4, 2e-4])])
    assert [fitted.step_time(shape) for shape in mixed] == pytest.approx(sums, rel=1e-12)
    assert fitted.step_time(prefill([(0, 64), (1024, 64)])) == pytest.approx(two, rel=1e-12)  # no decode rows
    # one long decode row among short ones: with 100 rows the kernel does not split (the rows fill
    # the GPU), so the long row's walk of 4000 keys bounds the rows' attention, whatever the others
    few = [calibrated.step_time(prefill([(0, 256)], [c] * 99 + [4000])) for c in (100, 200)]
    assert walk(100, 256, 4000) == 4000 and few[0] == pytest.approx(few[1], rel=1e-12)
    assert few[0] > calibrated.step_time(prefill([(0, 256)], [139] * 100))
    # with 4 rows it splits the long row in 16: the batch's bytes decide again
    split = [calibrated.step_time(prefill([(0, 256)], [c] * 3 + [4000])) for c in (100, 200)]
    assert walk(5, 256, 4000) == 256 and split[0] < split[1]


def test_table_width_prices_a_wide_table_and_the_mixed_steps_rows(calibrated, tmp_path, monkeypatch):
    """table_width: decode steps whose time grows with rows x width, and steps of one 256-token chunk
    whose time is the structural sum plus a known extra of (rows, width). A decode step pays for the
    width its longest sequence gives the table (not the mean's); a mixed step gets the extra at its
    own rows and width, in place of the mixed_step median."""
    widths, chunk = (16, 64, 256), 256
    extra = lambda b, w: 1e-4 + 2e-9 * b * w  # bilinear: interpolated exactly
    wide = lambda b, w: decode_step(b, 128) + 1e-9 * b * w
    rows = [(0, b, w, wide(b, w)) for b in BATCHES for w in widths]
    rows += [(chunk, b, w, calibrated.structural(prefill([(0, chunk)], [128] * b)) + extra(b, w))
             for b in BATCHES for w in widths]
    data = profile_data(mixed_times=[1.0, 1.0, 1.0])  # mixed_step points: checks only
    data["kv_dtypes"]["fp16"]["tables"]["table_width"] = dict(zip(("chunk_tokens", "batch", "width_blocks", "time_s"),
                                                                  map(list, zip(*rows))))
    old = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="old.json"))
    assert "table_width not used" in old.source and old.rows is not None  # every row padded: not used
    data["settings"] = {"table_width": {"padded_rows": "last"}}
    cost = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="wide.json"))
    assert cost.rows is None and "table_width" not in cost.source
    # 7 rows at 100 and one at 2000: mean 337.5 (a 32-block table), longest 2000 (128 blocks)
    skewed = decode([100] * 7 + [2000])
    assert cost.step_time(skewed) == pytest.approx(calibrated.step_time(skewed) + 1e-9 * 8 * (128 - 32), rel=1e-9)
    narrow = decode([300] * 8)  # as wide as its mean: nothing added
    assert cost.step_time(narrow) == pytest.approx(calibrated.step_time(narrow), rel=1e-12)
    # a mixed step: its rows and table width (the longest sequence: 3000 tokens, 256 blocks; 6 rows)
    mixed = prefill([(0, 600), (2400, 600)], [500] * 4)
    assert cost.step_time(mixed) == pytest.approx(calibrated.step_time(mixed) + extra(4, 256), rel=1e-9)
    assert cost.step_time(prefill([(0, 600)])) == pytest.approx(calibrated.step_time(prefill([(0, 600)])), rel=1e-12)


def with_mixed(tmp_path, monkeypatch, times) -> CalibratedCostModel:
    monkeypatch.setenv("KVSIM_PROFILES", str(write_profile(tmp_path, profile_data(mixed_times=times))))
    return cost_model_for(MODEL, H100, "fp16")


def test_swap_and_copies_use_measured_bandwidths(calibrated):
    base = calibrated.step_time(decode([512] * 4))
    moved = StepShape(4, 4, 2048, swap_bytes=10**9, copy_bytes=10**9, num_decode_seqs=4, decode_max_context=512)
    assert calibrated.step_time(moved) == pytest.approx(base + 1e9 / 5e10 + 1e9 / 1e12, rel=1e-9)


def test_fallback_to_roofline(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.profile_file.shipped_dir", lambda: tmp_path / "shipped")  # none shipped
    monkeypatch.setenv("KVSIM_PROFILES", str(tmp_path))  # an empty folder
    cost = cost_model_for(MODEL, H100, "fp16")
    assert type(cost) is CostModel and "h100 roofline" in cost.source and "no h100 profile" in cost.source
    write_profile(tmp_path)
    assert isinstance(cost_model_for(MODEL, H100, "fp16"), CalibratedCostModel)
    other_gpu = cost_model_for(MODEL, get_gpu("a100"), "fp16")  # only h100 was profiled
    assert type(other_gpu) is CostModel and other_gpu.source.startswith("a100 roofline")
    int8 = cost_model_for(MODEL, H100, "int8")  # a KV dtype the profile lacks
    assert type(int8) is CostModel and "lacks int8 tables" in int8.source
    data = profile_data()
    del data["kv_dtypes"]["fp16"]["tables"]["prefill_attention"]  # cut short by its time budget
    write_profile(tmp_path, data)
    cut = cost_model_for(MODEL, H100, "fp16")
    assert type(cut) is CostModel and "prefill_attention" in cut.source


def test_profiles_are_found_by_model_and_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr("engine.profile_file.shipped_dir", lambda: tmp_path / "shipped")  # none shipped
    path = write_profile(tmp_path, name="anything.json")
    monkeypatch.setenv("KVSIM_PROFILES", str(path))  # a file is used when its model and GPU match
    assert find_profile(MODEL.name, "h100").path == path
    assert find_profile(MODEL.name, "h200") is None and find_profile("llama-3.1-8b", "h100") is None
    monkeypatch.setenv("KVSIM_PROFILES", str(tmp_path / "missing"))
    with pytest.raises(ProfileError, match="missing: no such file or folder"):
        find_profile(MODEL.name, "h100")
    monkeypatch.setenv("KVSIM_PROFILES", str(tmp_path))  # a folder: <model>_<gpu>.json in it
    write_profile(tmp_path)
    source = cost_model_for(MODEL, H100, "fp16").source
    assert source == "calibrated profile smollm2-135m_h100.json (synthetic (test), 2026-01-01)"


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(format="other"), "field format"),
    (lambda d: d.update(version=99), "field version"),
    (lambda d: d.pop("gpu"), "field gpu: missing"),
    (lambda d: d["model"].update(num_layers="30"), "field model.num_layers: expected int"),
    (lambda d: d["kv_dtypes"]["fp16"]["tables"]["decode_step"]["time_s"].pop(), "decode_step: columns"),
    (lambda d: d["kv_dtypes"]["fp16"]["tables"]["prefill_step"]["time_s"].__setitem__(2, -1.0),
     "kv_dtypes.fp16.tables.prefill_step.time_s[2]"),
    (lambda d: d["kv_dtypes"]["fp16"]["tables"].update(bogus={}), "tables.bogus: unknown table"),
    (lambda d: d["kv_dtypes"]["fp16"]["tables"]["lm_head_sample"].pop("rows"), "lm_head_sample.rows: missing"),
])
def test_malformed_profile_names_file_and_field(tmp_path, edit, field):
    data = profile_data()
    edit(data)
    path = write_profile(tmp_path, data, name="bad.json")
    with pytest.raises(ProfileError) as error:
        load_profile(path)
    assert str(path) in str(error.value) and field in str(error.value)


def test_unreadable_or_mismatched_profile(tmp_path, monkeypatch):
    path = tmp_path / "broken.json"
    path.write_text('{"format": ')
    with pytest.raises(ProfileError, match=r"broken.json: invalid JSON at line 1"):
        load_profile(path)
    # same name, another shape: an error, not a silent fallback
    data = profile_data()
    data["model"]["num_layers"] = 12
    monkeypatch.setenv("KVSIM_PROFILES", str(write_profile(tmp_path, data)))
    with pytest.raises(ProfileError, match=r"smollm2-135m_h100.json: field model.num_layers is 12, but model "
                                           r"'smollm2-135m' has 30"):
        cost_model_for(MODEL, H100, "fp16")


def test_analytic_simulation_uses_the_profile_and_fast_path_agrees(tmp_path, monkeypatch):
    from scheduler.build import analytic_simulation
    from scheduler.request import Request

    monkeypatch.setenv("KVSIM_PROFILES", str(write_profile(tmp_path)))
    requests = [Request(i, 0.001 * i, 100 + 300 * (i % 4), 40 + 7 * i) for i in range(12)]

    def run(max_decode_run):
        sim = analytic_simulation(MODEL, "h100", "fp16", num_blocks=4000, max_decode_run=max_decode_run)
        sim.add_trace(requests)
        return sim, sim.run()

    sim, fast = run(256)
    assert isinstance(sim.backend.cost, CalibratedCostModel)
    _, slow = run(1)
    assert fast.steps.duration_s.tolist() == pytest.approx(slow.steps.duration_s.tolist(), rel=1e-12)
    # a decode step with every sequence at one grid context takes exactly the table's time
    assert fast.steps.duration_s.min() >= decode_step(1, 128)


# random_steps: whole steps of random compositions, generated here from a known linear law over the
# structural prediction; the fitted correction must recover the law on compositions it never saw
GRAPH = {"batch_buckets": [1, 2, 4, 8, 16, 32, 48, 64], "min_width_blocks": 16}


def law(cost, shape) -> float:
    from engine.profile_file import padded

    structural, b = cost.structural(shape), shape.num_decode_seqs
    if shape.prefill_chunks:
        rows, width = cost.graph_table(shape)
        return (1.2 * structural + 1e-3 * len(shape.prefill_chunks) + 1e-6 * (shape.num_tokens - b) + 2e-6 * b
                + 3e-10 * rows * width * 16 + 5e-4)
    rows, width = padded(b, shape.decode_max_context, 16, GRAPH["batch_buckets"], GRAPH["min_width_blocks"])
    return 1.1 * structural + 2e-10 * rows * width * 16 + 3e-4


def random_shapes(seed: int, count: int) -> list[StepShape]:
    import numpy as np

    from engine.profile import ProfileGrid, random_compositions
    from engine.profile_file import composition

    grid = ProfileGrid(batches=BATCHES, contexts=CONTEXTS, prefill_tokens=TOKENS, prefill_cached=CACHED)
    return [composition([sum(c), max(c, default=0)], len(c), chunks)
            for c, chunks in random_compositions(grid, np.random.default_rng(seed), count)]


SCORED_PREFILL = "in the step's CUDA graph, scored by kernels/prefill_scores.py"  # a profile's settings
SCORED_SETTINGS = {"scored_prefill": SCORED_PREFILL, "scored_decode_rows": SCORED_DECODE_ROWS}


def uniform_rows_off(monkeypatch):
    """The fit without the decode grid's uniform rows: these tests' laws hold for the random steps alone
    (test_uniform_grid_rows_keep_uniform_batches covers the rows)."""
    fit = Correction.fit.__func__
    monkeypatch.setattr(Correction, "fit", classmethod(lambda cls, m, t, s=None, u=None: fit(cls, m, t, s)))


def test_uniform_grid_rows_keep_uniform_batches(tmp_path):
    """Random decode steps 30% faster than the structural sum (a law fitted to heterogeneous batches),
    uniform grid steps as measured: with the grid's rows in the fit, uniform batches stay nearer
    their measured times than the random steps' law alone would put them."""
    from engine.profile_file import TABLES, step_row

    data = profile_data()
    data["settings"] = {"graph": GRAPH}
    structural = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data))
    shapes = [s for s in random_shapes(seed=1, count=48) if not s.prefill_chunks]
    rows = [(*step_row(s, 16, GRAPH["batch_buckets"], 16), 0.7 * structural.structural(s)) for s in shapes]
    data["kv_dtypes"]["fp16"]["tables"]["random_steps"] = dict(zip(TABLES["random_steps"], map(list, zip(*rows))))
    path = write_profile(tmp_path, data, name="fitted.json")
    with_grid = cost_model_for(MODEL, H100, "fp16", profile=path)
    grid = data["kv_dtypes"]["fp16"]["tables"]["decode_step"]
    uniform = [(StepShape(b, b, b * c, num_decode_seqs=b, decode_max_context=c), t)
               for b, c, t in zip(grid["batch"], grid["context"], grid["time_s"])]
    alone = Correction.fit(with_grid, data["kv_dtypes"]["fp16"]["tables"]["random_steps"])
    assert "decode" in with_grid.correction.weights and "decode" in alone.weights
    err = lambda correction: np.mean([abs(correction.apply(with_grid, s, with_grid.structural(s)) / t - 1) for s, t in uniform])
    assert err(alone) > 0.2 and err(with_grid.correction) < err(alone) - 0.05


def test_random_steps_fit_recovers_a_linear_law(tmp_path, monkeypatch):
    from engine.profile_file import TABLES, step_row

    uniform_rows_off(monkeypatch)
    data = profile_data()
    data["settings"] = {"graph": GRAPH}
    monkeypatch.setenv("KVSIM_PROFILES", str(write_profile(tmp_path, data)))
    structural = cost_model_for(MODEL, H100, "fp16")  # no random_steps: the structural sum, unchanged
    assert structural.correction.weights == {}
    fit_shapes = random_shapes(seed=1, count=48)
    rows = [(*step_row(s, 16, GRAPH["batch_buckets"], 16), law(structural, s)) for s in fit_shapes]
    data["kv_dtypes"]["fp16"]["tables"]["random_steps"] = dict(zip(TABLES["random_steps"], map(list, zip(*rows))))
    fitted = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="fitted.json"))
    assert set(fitted.correction.weights) == {"decode", "prefill"}
    assert fitted.correction.describe()["decode"]["structural"] == pytest.approx(1.1, rel=0.01)
    new = [s for s in random_shapes(seed=2, count=40) if Correction.key(s) not in fitted.correction.fitted]
    assert len(new) == 80
    for shape in new:  # compositions never fitted to
        assert fitted.step_time(shape) == pytest.approx(max(law(structural, shape), fitted.floor_s), rel=0.01)
    assert all(Correction.key(s) in fitted.correction.fitted for s in fit_shapes)


def test_a_correction_that_fits_noise_is_not_used(tmp_path, monkeypatch):
    """Times that follow the structural sum up to +-2% noise, except a few steps that a noisy GPU
    made 2-5x slower: a fitted law cannot beat the sum on the held-out rows, so none is used."""
    uniform_rows_off(monkeypatch)
    import numpy as np

    from engine.profile_file import TABLES, step_row

    data = profile_data()
    data["settings"] = {"graph": GRAPH}
    structural = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data))
    rng = np.random.default_rng(3)
    shapes = random_shapes(seed=1, count=48)
    times = [structural.structural(s) * (rng.choice([2.0, 5.0]) if rng.random() < 0.3 else 1 + rng.uniform(-0.02, 0.02))
             for s in shapes]
    rows = [(*step_row(s, 16, GRAPH["batch_buckets"], 16), t) for s, t in zip(shapes, times)]
    data["kv_dtypes"]["fp16"]["tables"]["random_steps"] = dict(zip(TABLES["random_steps"], map(list, zip(*rows))))
    noisy = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="noisy.json"))
    assert noisy.correction.weights == {}
    described = noisy.correction.describe()
    for kind in ("decode", "prefill"):
        check = described[kind]["held_out"]
        assert check["structural"] <= check["corrected"] and check["structural"] < 0.03
    shape = random_shapes(seed=2, count=1)[0]
    assert noisy.step_time(shape) == pytest.approx(max(structural.step_time(shape), noisy.floor_s))


def test_nonnegative_lstsq_drops_what_would_go_negative():
    import numpy as np

    from engine.calibrated import nonnegative_lstsq

    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(1, 2, 50), rng.uniform(0, 1, 50), np.ones(50)])
    y = 2 * x[:, 0] - 0.5 * x[:, 1] + 3  # the second feature would take a negative weight
    w = nonnegative_lstsq(x, y, free=(2,))
    assert w[1] == 0 and w[0] > 0
    assert np.allclose(nonnegative_lstsq(x, 2 * x[:, 0] + 0.5 * x[:, 1] - 1, free=(2,)), [2, 0.5, -1])


def test_table_width_grid_spans_the_graph_widths():
    from engine.profile import ProfileGrid

    grid = ProfileGrid()  # contexts to 8192: 512 blocks of 16
    points = grid.widths(16)
    assert {w for _, _, w in points} == {16, 64, 256, 512}
    assert {b for _, b, _ in points} == {1, 4, 16, 64, 256} and {n for n, _, _ in points} == {0, 256}
    assert len(points) == 2 * 5 * 4


def scored_law(cost, shape) -> float:
    """The unscored law plus what keeping scores adds: a score pass over every key a decode row reads;
    with prefill, the probabilities of every causal pair and the serial walks of the longest row in the
    prefill kernels (a decode row's too unless the step splits) and of the longest chunk
    (kernels/prefill_scores.py)."""
    if shape.prefill_chunks:
        longest_row, longest_chunk = longest_prefill_row(shape), max(n for _, n in shape.prefill_chunks)
        return (law(cost, shape) + 2e-7 * longest_row + 3e-7 * longest_chunk + 4e-13 * shape.prefill_attn_pairs
                + 1e-3)
    return law(cost, shape) + 5e-11 * shape.decode_context_tokens


def longest_prefill_row(shape) -> int:
    """The most tokens a row of a scored step with prefill reads in the prefill kernels: the longest
    chunk's, or a decode row's where the step does not split (scored_split)."""
    longest = max(c + n for c, n in shape.prefill_chunks)
    return longest if scored_split(shape.decode_max_context) else max(longest, shape.decode_max_context)


def test_scored_steps_fit_their_own_law_and_keep_the_unscored_one(tmp_path, monkeypatch):
    uniform_rows_off(monkeypatch)
    # both kinds of scored step with prefill among the random compositions (contexts up to 2,048):
    # decode rows split from 1,024 tokens, in the prefill kernels below
    monkeypatch.setattr("engine.buckets.SCORED_SPLIT_MIN_CONTEXT", 1024)
    from dataclasses import replace

    from engine.profile_file import TABLES, step_row

    data = profile_data()
    data["settings"] = {"graph": GRAPH, **SCORED_SETTINGS}
    structural = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data))
    table = lambda shapes, fn: dict(zip(TABLES["random_steps"], map(list, zip(
        *[(*step_row(s, 16, GRAPH["batch_buckets"], 16), fn(structural, s)) for s in shapes]))))
    tables = data["kv_dtypes"]["fp16"]["tables"]
    tables["random_steps"] = table(random_shapes(seed=1, count=48), law)
    unscored_only = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="a.json"))
    tables["scored_steps"] = table([replace(s, scored=True) for s in random_shapes(seed=3, count=80)], scored_law)
    fitted = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="b.json"))
    assert set(fitted.correction.weights) == {"decode", "prefill", "decode_scored", "prefill_scored"}
    new = random_shapes(seed=2, count=40)
    splits = {scored_split(s.decode_max_context) for s in new if s.prefill_chunks and s.num_decode_seqs}
    assert splits == {False, True}
    for shape in new:
        scored = replace(shape, scored=True)
        assert fitted.step_time(shape) == pytest.approx(unscored_only.step_time(shape), rel=1e-9)
        assert fitted.step_time(scored) == pytest.approx(max(scored_law(structural, scored), fitted.floor_s), rel=0.01)
        # without scored rows: the unscored law plus the roofline's score bytes (more, never the same)
        roof = unscored_only.roofline.score_time(scored)
        assert roof > 0
        assert unscored_only.step_time(scored) == pytest.approx(unscored_only.step_time(shape) + roof, rel=1e-9)
    assert Correction.key(replace(new[0], scored=True)) != Correction.key(new[0])


def test_a_profile_cut_short_fits_the_reduced_scored_law(tmp_path):
    """24 scored rows of each kind (a budget cut): too few for the full laws (30 and 48 rows), enough
    for the reduced ones, which recover a law of their own features; the unreduced ones stay unfitted."""
    from dataclasses import replace

    from engine.profile_file import TABLES, step_row

    data = profile_data()
    data["settings"] = {"graph": GRAPH, **SCORED_SETTINGS}
    structural = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data))
    eager = lambda cost, s: (1.5 * cost.structural(s) + 2e-7 * longest_prefill_row(s) + 4e-13 * s.prefill_attn_pairs
                             + 1e-3 if s.prefill_chunks else 1.2 * cost.structural(s) + 5e-11 * s.decode_context_tokens)
    shapes = [replace(s, scored=True) for s in random_shapes(seed=3, count=24)]
    data["kv_dtypes"]["fp16"]["tables"]["scored_steps"] = dict(zip(TABLES["scored_steps"], map(list, zip(
        *[(*step_row(s, 16, GRAPH["batch_buckets"], 16), eager(structural, s)) for s in shapes]))))
    cut = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="cut.json"))
    described = cut.correction.describe()
    assert set(cut.correction.weights) == {"decode_scored", "prefill_scored"}
    assert described["prefill_scored"]["held_out"]["features"] == list(Correction.REDUCED["prefill_scored"])
    assert described["prefill_scored"]["structural"] == pytest.approx(1.5, rel=0.01)
    assert described["prefill_scored"]["longest_walk_s"] == 0 and described["decode_scored"]["longest_walk_s"] == 0
    for shape in random_shapes(seed=2, count=20):
        scored = replace(shape, scored=True)
        assert cut.step_time(scored) == pytest.approx(max(eager(structural, scored), cut.floor_s), rel=0.01)


def test_scored_prefill_rows_of_profiles_before_the_score_kernel_are_left_out(tmp_path, monkeypatch):
    """A profile without settings.scored_prefill timed H2O's steps with prefill eagerly with the torch
    reference scorer (~45 ms where the engine now replays a graph), one without scored_decode_rows
    with every row in the prefill kernels (a long decode row one program's serial walk): those rows
    are not fitted, such steps cost the unscored law plus the score bytes; scored decode rows still
    fit their law."""
    uniform_rows_off(monkeypatch)
    from dataclasses import replace

    from engine.profile_file import TABLES, step_row

    data = profile_data()
    data["settings"] = {"graph": GRAPH}
    structural = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data))
    table = lambda shapes, fn: dict(zip(TABLES["random_steps"], map(list, zip(
        *[(*step_row(s, 16, GRAPH["batch_buckets"], 16), fn(structural, s)) for s in shapes]))))
    tables = data["kv_dtypes"]["fp16"]["tables"]
    tables["random_steps"] = table(random_shapes(seed=1, count=48), law)
    tables["scored_steps"] = table([replace(s, scored=True) for s in random_shapes(seed=3, count=80)], scored_law)
    eager = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="eager.json"))
    data["settings"]["scored_prefill"] = SCORED_PREFILL
    unsplit = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="unsplit.json"))
    data["settings"]["scored_decode_rows"] = "decode kernel"  # a profile of 2026-12-06 11:40: always split
    split = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="split.json"))
    data["settings"].update(SCORED_SETTINGS)
    new = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="new.json"))
    assert "torch reference" in eager.source and "every row in the prefill kernels" in unsplit.source
    assert "however short" in split.source
    assert "not used" not in new.source and "prefill_scored" in new.correction.weights
    for old in (eager, unsplit, split):
        assert set(old.correction.weights) == {"decode", "prefill", "decode_scored"}
        for shape in random_shapes(seed=2, count=20):
            scored = replace(shape, scored=True)
            if shape.prefill_chunks:
                assert old.step_time(scored) == pytest.approx(old.step_time(shape) + old.roofline.score_time(scored),
                                                              rel=1e-9)
            else:
                assert old.step_time(scored) == pytest.approx(new.step_time(scored), rel=1e-9)


def test_roofline_prices_score_bytes():
    cost = CostModel(MODEL, H100, kv_bytes_per_token=2 * 2 * MODEL.num_layers * MODEL.num_kv_heads * MODEL.head_dim)
    for shape in (decode([300, 2000, 77]), prefill([(0, 512), (1024, 64)], [300, 20])):
        from dataclasses import replace

        extra = cost.step_time(replace(shape, scored=True)) - cost.step_time(shape)
        assert extra == pytest.approx(cost.score_time(shape)) and extra > 0
    # for every key a decode row reads, fp32 logits per query head and scores per KV head, written and read
    d = decode([1000, 3000])
    assert cost.score_time(d) == pytest.approx(8 * (MODEL.num_heads + MODEL.num_kv_heads) * MODEL.num_layers * 4000 / cost.bw)


def test_analytic_mode_prices_h2o_above_streaming():
    """H2O keeps attention scores every step; StreamingLLM does not: same tokens, more time."""
    from scheduler.build import analytic_simulation
    from scheduler.request import Request

    requests = [Request(i, 0.01 * i, 3000 + 100 * (i % 3), 100) for i in range(64)]
    runs = {}
    for policy in ("streaming", "h2o"):
        sim = analytic_simulation("llama-3.1-8b", "a100", "fp16", budget_tokens=2048, policy=policy)
        sim.add_trace(requests)
        runs[policy] = sim.run()
    s, h = runs["streaming"].steps, runs["h2o"].steps
    assert (s.prefill_tokens + s.decode_tokens).sum() == (h.prefill_tokens + h.decode_tokens).sum()
    assert h.duration_s.sum() > 1.005 * s.duration_s.sum()


def test_a_spike_in_a_grid_table_is_left_out_and_named(tmp_path):
    """A grid point far above both neighbours along its row (the machine was busy for its reps)
    would bend every step near it; the model interpolates past it and says so in its source."""
    from engine.profile_file import spikes

    data = profile_data()
    table = data["kv_dtypes"]["fp16"]["tables"]["decode_step"]
    i = [*zip(table["batch"], table["context"])].index((8, 512))
    clean = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="clean.json"))
    assert spikes(table, "batch", "context") == [] and "spike" not in clean.source
    table["time_s"][i] *= 2.5
    j = [*zip(table["batch"], table["context"])].index((4, 2048))  # a row's last point has one neighbour
    table["time_s"][j] *= 2.5
    assert spikes(table, "batch", "context") == [i]
    spiky = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name="spiky.json"))
    assert "decode_step(8, 512)" in spiky.source
    near = decode([500] * 8)
    assert spiky.step_time(near) == pytest.approx(decode_step(8, 256) + (decode_step(8, 1024) - decode_step(8, 256))
                                                  * (500 - 256) / (1024 - 256), rel=1e-9)
    assert clean.step_time(near) == pytest.approx(decode_step(8, 500), rel=1e-9)


def test_profile_consistency_warns_when_whole_steps_disagree_with_the_grid(tmp_path):
    """`kvsim profile` reports the held-out errors; random steps 20% off the structural sum built from
    the same profile's grid (a busy GPU or a slow host) draw a warning, steps that follow it do not."""
    from engine.calibrated import consistency
    from engine.profile_file import TABLES, step_row

    data = profile_data()
    data["settings"] = {"graph": GRAPH}
    structural = cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data))
    rng = np.random.default_rng(4)
    for name, scale in (("off.json", lambda: rng.choice([0.75, 1.25])), ("on.json", lambda: 1 + rng.uniform(-0.01, 0.01))):
        rows = [(*step_row(s, 16, GRAPH["batch_buckets"], 16), scale() * structural.structural(s))
                for s in random_shapes(seed=1, count=48)]
        data["kv_dtypes"]["fp16"]["tables"]["random_steps"] = dict(zip(TABLES["random_steps"], map(list, zip(*rows))))
        line, warnings = consistency(cost_model_for(MODEL, H100, "fp16", profile=write_profile(tmp_path, data, name=name)))
        assert line.startswith("held-out random steps") and "decode" in line and "prefill" in line
        if name == "off.json":
            assert len(warnings) == 2 and all("measure again" in w for w in warnings)
        else:
            assert warnings == []
