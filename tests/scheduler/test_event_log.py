"""Exact event logs, in SimPy's style, for batching, chunked prefill and preemption."""

from __future__ import annotations

from tests.scheduler.helpers import req, sim_with


def steps(log):
    return [(t, detail) for t, what, detail in log if what == "step"]


def test_continuous_batching_joins_a_running_batch():
    sim = sim_with([req(0, 0.0, 4, 3), req(1, 1.5, 2, 2)], num_blocks=64, block_size=4)
    res = sim.run()
    assert sim.log == [
        (0.0, "arrive", 0), (0.0, "step", ((0, 4),)),           # prefill of 0 -> its 1st token at t=1
        (1.0, "step", ((0, 1),)),                               # decode 0 (2nd token at t=2)
        (1.5, "arrive", 1),
        (2.0, "step", ((0, 1), (1, 2))),                        # decode 0 (3rd, last) + prefill 1
        (3.0, "finish", 0), (3.0, "step", ((1, 1),)),
        (4.0, "finish", 1),
    ]
    assert res.requests.ttft_ms.tolist() == [1000.0, 1500.0]
    assert res.requests.itl_ms.tolist() == [[1000.0, 1000.0], [1000.0]]


def test_chunked_prefill_decodes_first_then_chunks():
    # budget 4 tokens a step: request 1's 10-token prompt goes 3 + 4 + 3 beside request 0's decodes
    sim = sim_with([req(0, 0.0, 2, 4), req(1, 0.5, 10, 1)], num_blocks=64, block_size=4,
                   max_num_batched_tokens=4)
    sim.run()
    assert steps(sim.log) == [
        (0.0, ((0, 2),)),
        (1.0, ((0, 1), (1, 3))),
        (2.0, ((0, 1), (1, 3))),
        (3.0, ((0, 1), (1, 3))),
        (4.0, ((1, 1),)),
    ]


def test_no_chunking_waits_for_a_step_with_room():
    sim = sim_with([req(0, 0.0, 2, 3), req(1, 0.5, 6, 1)], num_blocks=64, block_size=4,
                   max_num_batched_tokens=8, max_model_len=8, enable_chunked_prefill=False)
    sim.run()
    assert steps(sim.log) == [(0.0, ((0, 2),)), (1.0, ((0, 1), (1, 6))), (2.0, ((0, 1),))]


def test_preemption_takes_the_latest_admitted_and_recomputes():
    # 4 blocks of 2 tokens, no watermark. Two 3-token prompts take 2 blocks each; their second
    # decode (token index 4) needs a third block each. Request 1, admitted last, is preempted and,
    # once request 0 is done, recomputed: 3 prompt tokens + its 2 outputs in one prefill.
    sim = sim_with([req(0, 0.0, 3, 4), req(1, 0.0, 3, 4)], num_blocks=4, block_size=2, watermark=0.0)
    res = sim.run()
    assert [(t, w, d) for t, w, d in sim.log if w != "arrive"] == [
        (0.0, "step", ((0, 3), (1, 3))),
        (1.0, "step", ((0, 1), (1, 1))),
        (2.0, "preempt", 1), (2.0, "step", ((0, 1),)),
        (3.0, "step", ((0, 1),)),                       # 1 needs 3 blocks back, only 1 is free
        (4.0, "finish", 0), (4.0, "step", ((1, 5),)),
        (5.0, "step", ((1, 1),)),
        (6.0, "finish", 1),
    ]
    assert res.requests.preemptions.tolist() == [0, 1]
    assert res.requests.output_tokens.tolist() == [4, 4]
    assert res.requests.ttft_ms.tolist() == [1000.0, 1000.0]  # the first token came before preemption


def test_swap_preemption_comes_back_before_new_admissions():
    # As above with swap: request 1 goes to the host at t=2. Request 2 (1 block) arrives at 1.5 and
    # would fit at t=3, but nothing is admitted while a sequence is swapped out.
    sim = sim_with([req(0, 0.0, 3, 4), req(1, 0.0, 3, 4), req(2, 1.5, 1, 1)], num_blocks=4, block_size=2,
                   watermark=0.0, preemption_mode="swap", num_swap_blocks=8)
    res = sim.run()
    assert sim.log == [
        (0.0, "arrive", 0), (0.0, "arrive", 1), (0.0, "step", ((0, 3), (1, 3))),
        (1.0, "step", ((0, 1), (1, 1))), (1.5, "arrive", 2),
        (2.0, "preempt", 1), (2.0, "step", ((0, 1),)),
        (3.0, "step", ((0, 1),)),
        (4.0, "finish", 0), (4.0, "step", ((1, 1), (2, 1))),   # swapped in and decoding at once
        (5.0, "finish", 2), (5.0, "step", ((1, 1),)),
        (6.0, "finish", 1),
    ]
    assert res.kv_stats["swap_out_bytes"] == res.kv_stats["swap_in_bytes"]
    assert res.kv_stats["swap_out_blocks"] == 2
    assert res.requests.preemptions.tolist() == [0, 1, 0]
