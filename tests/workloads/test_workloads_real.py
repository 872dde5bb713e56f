"""The real traces in ../shared/traces read to the row counts and statistics their README states,
and the Azure slice shipped in the package."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import workloads
from workloads import read_trace
from workloads_testdata import shared_trace

# README (../shared/traces/README.md): rows, span s, rate req/s, then (mean, p50, p99, max, min) per column
AZURE_STATS = {
    "AzureLLMInferenceTrace_conv.csv": (19_366, 3501.7, 5.53, (1155, 1020, 4142, 14050, 2), (211, 129, 601, 1000, 7)),
    "AzureLLMInferenceTrace_code.csv": (8_819, 3435.9, 2.57, (2048, 1469, 7436, 7437, 3), (28, 13, 252, 1899, 6)),
}


def five_numbers(values: np.ndarray) -> tuple[int, ...]:
    return (
        round(values.mean()),
        int(np.percentile(values, 50, method="nearest")),
        int(np.percentile(values, 99, method="nearest")),
        int(values.max()),
        int(values.min()),
    )


@pytest.mark.parametrize("name", sorted(AZURE_STATS))
def test_azure_2023_traces_match_their_readme(name):
    rows, span_s, rate, prompt, output = AZURE_STATS[name]
    trace = read_trace(shared_trace(name))
    requests = trace.requests
    assert trace.format == "azure" and trace.summary.rows_read == trace.summary.rows_kept == rows == len(trace)
    assert requests["arrival_s"].iloc[-1] == pytest.approx(span_s, abs=0.05)
    assert rows / requests["arrival_s"].iloc[-1] == pytest.approx(rate, abs=0.005)
    assert five_numbers(requests["prompt_tokens"].to_numpy()) == prompt
    assert five_numbers(requests["output_tokens"].to_numpy()) == output


def test_mooncake_conversation_trace_matches_its_readme():
    trace = read_trace(shared_trace("mooncake_conversation_trace.jsonl"))
    requests = trace.requests
    assert trace.format == "mooncake" and len(trace) == trace.summary.rows_read == 12_031
    assert requests["arrival_s"].iloc[-1] == 3536.999
    prompt, output = requests["prompt_tokens"].to_numpy(), requests["output_tokens"].to_numpy()
    assert (round(prompt.mean()), int(np.median(prompt)), int(prompt.max())) == (12_035, 6_909, 126_195)
    assert (round(output.mean()), int(np.median(output)), int(output.max())) == (343, 350, 2_000)
    blocks = -(-prompt // 512)
    assert [len(ids) for ids in requests["prefix_block_ids"]] == blocks.tolist()


def test_mooncake_infinite_cache_reuse_share_is_36_6_percent():
    requests = read_trace(shared_trace("mooncake_conversation_trace.jsonl")).requests
    references = np.concatenate([np.asarray(ids) for ids in requests["prefix_block_ids"]])
    distinct = len(np.unique(references))
    assert (len(references), distinct) == (288_500, 182_790)
    assert round(100 * (len(references) - distinct) / len(references), 1) == 36.6


def test_default_trace_is_the_first_2000_rows_of_azure_conv_byte_for_byte():
    full_path = shared_trace("AzureLLMInferenceTrace_conv.csv")
    shipped = workloads.DEFAULT_TRACE.read_bytes()
    assert full_path.read_bytes().startswith(shipped)
    assert shipped.count(b"\r\n") == 2000 and not shipped.endswith(b"\n")  # header + 2000 rows, CRLF, no final newline
    slice_trace = read_trace(workloads.DEFAULT_TRACE)
    first = read_trace(full_path).requests.iloc[:2000]
    assert len(slice_trace) == 2000
    pd.testing.assert_frame_equal(slice_trace.requests, first)
