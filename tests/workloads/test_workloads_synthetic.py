"""Synthetic arrivals and lengths: their statistics, their determinism, the table they make."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workloads import (
    COLUMNS,
    ConstantArrivals,
    EmpiricalLengths,
    EmpiricalRequests,
    FixedLengths,
    GammaArrivals,
    IndependentLengths,
    LognormalLengths,
    PoissonArrivals,
    UniformLengths,
    read_trace,
    synthetic_trace,
)
from workloads_testdata import FIXTURES, write

N = 100_000


def gap_stats(arrivals: np.ndarray) -> tuple[float, float]:
    gaps = np.diff(arrivals)
    return gaps.mean(), gaps.std() / gaps.mean()


@pytest.mark.parametrize(
    ("process", "cv"),
    [(PoissonArrivals(4.0), 1.0), (GammaArrivals(4.0, 0.5), 0.5), (GammaArrivals(4.0, 3.0), 3.0)],
)
def test_arrival_processes_have_their_rate_and_cv(process, cv):
    arrivals = process.sample(N, np.random.default_rng(0))
    mean_gap, measured_cv = gap_stats(arrivals)
    assert arrivals[0] == 0.0 and np.all(np.diff(arrivals) >= 0) and len(arrivals) == N
    assert mean_gap == pytest.approx(0.25, rel=0.03)
    assert measured_cv == pytest.approx(cv, rel=0.05)


def test_constant_arrivals_are_evenly_spaced():
    assert ConstantArrivals(4.0).sample(5, np.random.default_rng(0)).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_length_distributions():
    rng = np.random.default_rng(1)
    assert FixedLengths(7).sample(3).tolist() == [7, 7, 7]
    uniform = UniformLengths(3, 5).sample(N, rng)
    assert set(np.unique(uniform)) == {3, 4, 5}
    lognormal = LognormalLengths(500.0, 1.5).sample(N, rng)
    assert lognormal.mean() == pytest.approx(500, rel=0.05) and lognormal.std() / lognormal.mean() == pytest.approx(
        1.5, rel=0.1
    )
    assert lognormal.min() >= 1 and lognormal.dtype == np.int64
    assert LognormalLengths(500.0, 1.5, max_tokens=800).sample(1000, rng).max() == 800
    empirical = EmpiricalLengths(np.array([10, 20, 20])).sample(N, rng)
    assert set(np.unique(empirical)) == {10, 20} and (empirical == 20).mean() == pytest.approx(2 / 3, abs=0.01)
    with pytest.raises(ValueError):
        UniformLengths(5, 3)
    with pytest.raises(ValueError):
        PoissonArrivals(0.0)


def test_synthetic_trace_has_the_reader_table_and_repeats_with_its_seed():
    lengths = IndependentLengths(UniformLengths(10, 100), LognormalLengths(50.0, 1.0))
    trace = synthetic_trace(1000, PoissonArrivals(2.0), lengths, rng=42, model="m")
    again = synthetic_trace(1000, PoissonArrivals(2.0), lengths, rng=np.random.default_rng(42), model="m")
    other = synthetic_trace(1000, PoissonArrivals(2.0), lengths, rng=43, model="m")
    pd.testing.assert_frame_equal(trace.requests, again.requests)
    assert not trace.requests["prompt_tokens"].equals(other.requests["prompt_tokens"])
    assert tuple(trace.requests.columns) == COLUMNS and trace.format == "synthetic"
    assert trace.requests["request_id"].tolist() == list(range(1000))
    assert (trace.summary.rows_read, trace.summary.rows_kept) == (1000, 1000)
    assert set(trace.requests["model"]) == {"m"}
    with pytest.raises(TypeError):
        synthetic_trace(10, PoissonArrivals(2.0), lengths, rng=None)


def test_empirical_requests_keep_prompt_and_output_paired(tmp_path):
    source = read_trace(write(tmp_path, "v.csv", FIXTURES["vidur"][1]))  # (120, 30), (64, 8), (2048, 256)
    trace = synthetic_trace(300, ConstantArrivals(1.0), EmpiricalRequests.of(source), rng=0)
    pairs = set(zip(trace.requests["prompt_tokens"], trace.requests["output_tokens"]))
    assert pairs == {(120, 30), (64, 8), (2048, 256)}
    column = EmpiricalLengths.of(source, "output_tokens").sample(100, np.random.default_rng(0))
    assert set(column) == {30, 8, 256}
