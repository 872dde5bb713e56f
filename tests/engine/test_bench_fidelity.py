"""bench/fidelity.py's pure parts on the CPU: the standalone replay rebuilds a step the cost model
would price the same (same chunks, decode rows, context sum and longest context)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engine.profile_file import composition

spec = importlib.util.spec_from_file_location("bench_fidelity", Path(__file__).parents[2] / "bench" / "fidelity.py")
fidelity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fidelity)


@pytest.mark.parametrize("contexts, chunks", [
    ([700, 35, 4100, 18, 900], ((0, 300), (1200, 64))),
    ([513], ()),
    ([], ((0, 2048),)),
    ([16, 16, 17], ((5, 1),)),
])
def test_replay_inputs_keep_what_the_cost_model_sees(contexts, chunks):
    shape = composition([sum(contexts), max(contexts, default=0)], len(contexts), chunks)
    seq_lens, new = fidelity.replay_inputs(shape)
    assert len(seq_lens) == len(new) == len(contexts) + len(chunks)
    assert [(s - n, n) for s, n in zip(seq_lens, new)][:len(chunks)] == list(chunks)
    decode = seq_lens[len(chunks):]
    assert new[len(chunks):] == [1] * len(contexts)
    again = composition([sum(decode), max(decode, default=0)], len(decode), chunks)
    assert again == shape
    others = decode[1:]  # the rest share what the longest leaves, within a token of each other
    assert not others or max(others) - min(others) <= 1


def test_recorded_steps_read_back_old_and_new_rows():
    """A steps file keeps each StepShape field; rows recorded before `scored` existed read as unscored."""
    import dataclasses

    shape = dataclasses.replace(composition([900, 700], 2, ((64, 300),)), scored=True)
    (back, seconds), = fidelity.records_from_json(fidelity.records_json([(shape, 0.0123)]))
    assert back == shape and seconds == 0.0123
    old = fidelity.records_json([(dataclasses.replace(shape, scored=False), 0.5)])[0]
    del old[-2]  # the row as written before: prefill_chunks, then the time
    (back, _), = fidelity.records_from_json([old])
    assert back == dataclasses.replace(shape, scored=False)


def test_recorder_keeps_copies_of_every_nth_steps_inputs_and_the_host_gaps(monkeypatch):
    """The in-place replay times kept steps on their own block tables: the recorder must keep the
    inputs of steps 0, n, 2n... as they were (the engine reuses its lists), and one gap per step."""
    from types import SimpleNamespace

    from engine.backends.analytic import StepResult
    from engine.runner import StepInput

    monkeypatch.setattr("kvsim.profile_serving.warm_eager_steps", lambda *a: None)
    table = [5, 9]

    def stage(batch, score_out=None, score_windows=None):
        return "staged"

    def execute(scheduled, kv, swap_bytes=0):
        backend.runner.stage([StepInput([1], 40, [7], table, 41)])
        table.append(len(table))  # the live table grows after the step, as a sequence's does
        return StepResult(1e-3)

    backend = SimpleNamespace(runner=SimpleNamespace(stage=stage), execute=execute, shape=lambda *a: "shape")
    recorder = fidelity.StepRecorder((), keep_every=3)
    recorder.attach(SimpleNamespace(backend=backend))
    for _ in range(7):
        backend.execute([], None)
    assert sorted(recorder.kept) == [0, 3, 6] and len(recorder.records) == len(recorder.gaps) == 7
    assert [recorder.kept[i][0][0].block_table for i in (0, 3, 6)] == [[5, 9], [5, 9, 2, 3, 4], [5, 9, 2, 3, 4, 5, 6, 7]]
    assert recorder.gaps[0] == 0.0 and all(g >= 0 for g in recorder.gaps)
    assert sorted(recorder.stage_host) == list(range(7)) and all(t >= 0 for t in recorder.stage_host.values())


def test_scaled_steps_scale_each_step_by_its_own_draw_and_restore():
    """--sensitivity scales every step by a constant, --jitter by one seeded draw a step: the same
    seed gives the same times, and the cost model is itself again afterwards."""
    import numpy as np

    from engine.cost_model import cost_model_for
    from engine.gpus import get_gpu
    from kvsim.simulate import model_config

    cost = cost_model_for(model_config("smollm2-135m"), get_gpu("h100"), "fp16")
    shape = composition([5000, 2000], 4, ((0, 300),))
    base = cost.step_time(shape)
    with fidelity.scaled_steps(lambda: 1.5):
        assert cost.step_time(shape) == pytest.approx(1.5 * base)

    def jittered(seed: int) -> list[float]:
        rng = np.random.default_rng(seed)
        with fidelity.scaled_steps(lambda: 1 + 0.01 * rng.standard_normal()):
            return [cost.step_time(shape) / base - 1 for _ in range(200)]

    draws = jittered(0)
    assert draws == jittered(0) and draws != jittered(1)
    assert 0.007 < np.std(draws) < 0.013 and len(set(draws)) == 200
    assert cost.step_time(shape) == base


def test_first_of_graph_splits_each_graphs_first_step_from_the_rest():
    """Steps of one CUDA graph (same padded rows and table width) after the first count as 'others';
    a step padded to another graph is a first again; the excess is what the first steps took beyond
    the model."""
    import numpy as np

    from engine.cost_model import cost_model_for
    from engine.gpus import get_gpu
    from kvsim.simulate import model_config

    cost = cost_model_for(model_config("smollm2-135m"), get_gpu("h100"), "fp16")
    a, a2 = composition([3000, 900], 5, ()), composition([3100, 950], 5, ())  # one graph: 8 rows, 64 blocks
    b, c = composition([3000, 2000], 5, ()), composition([900, 300], 3, ((0, 300),))  # wider table; with prefill
    assert cost.graph_table(a) == cost.graph_table(a2) != cost.graph_table(b)
    shapes = [a, a2, b, a, c, c]
    scored = [(s, cost.step_time(s) * (1.2 if i in (0, 2, 4) else 1.0)) for i, s in enumerate(shapes)]
    rel = np.array([cost.step_time(s) / m - 1 for s, m in scored])
    out = fidelity.first_of_graph(scored, rel, cost)
    assert out["graphs"] == 3
    assert out["first_signed_median"] == pytest.approx(1 / 1.2 - 1) and out["others_signed_median"] == pytest.approx(0)
    assert out["first_excess_ms"] == pytest.approx(1e3 * 0.2 * sum(cost.step_time(s) for s in (a, b, c)))


def test_consecutive_tables_move_each_rows_blocks_and_slots_together():
    """The in-place replay's layout check: every row's table on consecutive blocks (rows one after
    another, a shared block once per row), each slot on the same offset of its block's new place,
    slots that write nothing (-1) untouched; a pool too small gives None."""
    from engine.runner import StepInput

    bs = 4
    chunk = StepInput([1, 2, 3], 5, [9 * bs + 1, 9 * bs + 2, 9 * bs + 3], [7, 9], 8)  # positions 5-7: block 9
    decode = StepInput([4], 12, [2 * bs], [9, 30, 31, 2], 13)  # shares block 9 with the chunk
    padding = StepInput([5], 0, [-1], [3], 1)
    moved = fidelity.consecutive_tables([chunk, decode, padding], bs, num_blocks=7)
    assert [x.block_table for x in moved] == [[0, 1], [2, 3, 4, 5], [6]]
    assert moved[0].slots == [1 * bs + 1, 1 * bs + 2, 1 * bs + 3]  # block 9 was the chunk's second
    assert moved[1].slots == [5 * bs] and moved[2].slots == [-1]
    assert [(x.token_ids, x.start_position, x.seq_len) for x in moved] == [
        (x.token_ids, x.start_position, x.seq_len) for x in (chunk, decode, padding)]
    assert fidelity.consecutive_tables([chunk, decode, padding], bs, num_blocks=6) is None


def test_a_slice_the_profile_fitted_is_refused(tmp_path, monkeypatch):
    """A profile's serving steps came from the first rows of the package's trace (the full conv
    trace's first rows too): a fidelity slice overlapping them is refused, one past them runs."""
    from argparse import Namespace

    from tests.engine.test_cost_model import profile_data, write_profile
    from workloads import DEFAULT_TRACE

    data = profile_data()
    data["settings"] = {"serving_steps": {"trace": DEFAULT_TRACE.name, "shipped": True, "rows": [0, 300]}}
    monkeypatch.setenv("KVSIM_PROFILES", str(write_profile(tmp_path, data)))
    args = lambda offset: Namespace(model="smollm2-135m", kv_dtypes="fp16", offset=offset, requests=500)
    for name in (DEFAULT_TRACE.name, fidelity.FULL_AZURE_CONV):
        with pytest.raises(SystemExit, match="overlap rows 0-300.*take --offset 300"):
            fidelity.check_disjoint(args(0), Path(name), "h100")
        with pytest.raises(SystemExit, match="rows 299-799"):
            fidelity.check_disjoint(args(299), Path(name), "h100")
        fidelity.check_disjoint(args(300), Path(name), "h100")
    fidelity.check_disjoint(args(0), Path("mooncake.jsonl"), "h100")  # another trace: nothing fitted


def test_a_finished_configurations_backend_is_freed_before_the_next(monkeypatch):
    """The recorder's wrapper and the backend refer to each other: only the collector frees them, and
    the next configuration must not allocate its KV store beside the last one's (llama-3.1-8b ran out
    of an H100's memory at its third configuration). Output files name a model other than SmolLM2."""
    import gc
    import weakref
    from types import SimpleNamespace

    from kvsim.profile_serving import release_device_memory

    monkeypatch.setattr("kvsim.profile_serving.warm_eager_steps", lambda *a: None)

    class Backend:  # stands in for the compute backend holding the model and the KV store
        def __init__(self):
            self.runner = SimpleNamespace(stage=lambda *a: None)

        def execute(self, scheduled, kv, swap_bytes=0):
            return None

    gc.disable()  # as when a run allocates GPU memory, which the collector's thresholds do not count
    try:
        backend = Backend()
        fidelity.StepRecorder((), keep_every=0).attach(SimpleNamespace(backend=backend))
        alive = weakref.ref(backend)
        del backend
        assert alive() is not None  # the cycle keeps it
        release_device_memory()
        assert alive() is None
    finally:
        gc.enable()
    assert fidelity.output_name("smollm2-135m", "h100") == "fidelity_h100.json"
    assert fidelity.output_name("llama-3.1-8b", "h100") == "fidelity_llama-3.1-8b_h100.json"
