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
