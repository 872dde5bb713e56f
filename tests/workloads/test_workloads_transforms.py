"""Time window, rate scale, length caps, sampling and new arrivals on a request table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workloads import cap_lengths, read_trace, sample, scale_rate, window, with_arrivals
from workloads_testdata import FIXTURES, MOONCAKE_ROWS, jsonl, write


@pytest.fixture
def bailian(tmp_path):
    return read_trace(write(tmp_path, "q.jsonl", FIXTURES["bailian"][1]))  # arrivals 0, .5, 1.75, 2.5, 3.5


@pytest.fixture
def mooncake(tmp_path):
    return read_trace(write(tmp_path, "m.jsonl", jsonl(MOONCAKE_ROWS)))


def test_window_keeps_the_interval_counts_from_its_start_and_remaps_parents(bailian):
    cut = window(bailian, 0.5, 3.0)
    requests = cut.requests
    assert requests["arrival_s"].tolist() == [0.0, 1.25, 2.0]
    assert requests["request_id"].tolist() == [0, 1, 2]
    assert requests["session_id"].tolist() == ["11", "10", "10"]
    assert requests["parent_id"].tolist() == [pd.NA, pd.NA, 1]  # row 2's parent is gone; row 3's is now row 1
    assert cut.summary == bailian.summary and cut.prefix_block_size == 16
    with pytest.raises(ValueError):
        window(bailian, 2.0, 2.0)


def test_scale_rate_replays_n_times_faster(bailian):
    faster = scale_rate(bailian, 2.0)
    assert faster.requests["arrival_s"].tolist() == [0.0, 0.25, 0.875, 1.25, 1.75]
    pd.testing.assert_series_equal(faster.requests["prompt_tokens"], bailian.requests["prompt_tokens"])
    assert bailian.requests["arrival_s"].tolist()[1] == 0.5  # the input is not modified
    with pytest.raises(ValueError):
        scale_rate(bailian, 0)


def test_cap_lengths_truncates_prompts_outputs_and_block_ids(mooncake):
    capped = cap_lengths(mooncake, 500).requests  # prompts 1000, 1024, 513, 100; outputs 50, 5, 7, 1
    assert capped["prompt_tokens"].tolist() == [499, 499, 499, 100]
    assert capped["output_tokens"].tolist() == [1, 1, 1, 1]
    assert capped["prefix_block_ids"].tolist() == [(0,), (0,), (0,), (4,)]
    roomy = cap_lengths(mooncake, 1020).requests
    assert roomy["prompt_tokens"].tolist() == [1000, 1019, 513, 100]
    assert roomy["output_tokens"].tolist() == [20, 1, 7, 1]
    assert roomy["prefix_block_ids"].tolist() == [(0, 1), (0, 2), (0, 3), (4,)]  # 1019 tokens still need 2 blocks


def test_cap_lengths_can_drop_what_does_not_fit(mooncake):
    kept = cap_lengths(mooncake, 1030, policy="drop").requests  # 1000 + 50 does not fit, 1024 + 5 does
    assert kept["prompt_tokens"].tolist() == [1024, 513, 100]
    with pytest.raises(ValueError):
        cap_lengths(mooncake, 1030, policy="squeeze")


def test_sample_is_seeded_and_keeps_arrival_order(tmp_path):
    trace = read_trace(
        write(
            tmp_path,
            "v.csv",
            b"arrived_at,num_prefill_tokens,num_decode_tokens\n"
            + b"".join(f"{i},{i + 1},1\n".encode() for i in range(50)),
        )
    )
    one = sample(trace, 10, 7).requests
    two = sample(trace, 10, np.random.default_rng(7)).requests
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == 10 and one["arrival_s"].is_monotonic_increasing
    assert one["prompt_tokens"].tolist() == (one["arrival_s"] + 1).astype(int).tolist()  # rows kept whole
    assert sample(trace, 10, 8).requests["prompt_tokens"].tolist() != one["prompt_tokens"].tolist()
    with pytest.raises(ValueError):
        sample(trace, 51, 0)


def test_with_arrivals_resorts_and_keeps_links(bailian):
    moved = with_arrivals(bailian, np.array([5.0, 4.0, 3.0, 2.0, 1.0])).requests
    assert moved["arrival_s"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert moved["prompt_tokens"].tolist() == [20, 90, 70, 16, 40]
    assert moved["parent_id"].tolist() == [pd.NA, 2, 4, pd.NA, pd.NA]  # 90's parent is 70, 70's is 40
    with pytest.raises(ValueError):
        with_arrivals(bailian, np.zeros(3))
