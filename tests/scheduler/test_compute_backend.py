"""The compute backend (real SmolLM2 on the CPU) inside the simulation."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backends.analytic import AnalyticBackend
from engine.backends.compute import ComputeBackend
from engine.cost_model import CostModel
from engine.generate import generate
from engine.gpus import get_gpu
from kvcache.sizing import kv_bytes_per_token
from scheduler.config import SchedulerConfig
from scheduler.request import Request
from scheduler.simulation import Simulation


def requests(ids) -> list[Request]:
    rng = np.random.default_rng(0)
    spec = [(0.0, 40, 12), (0.0, 23, 9), (0.001, 70, 6), (0.002, 5, 14)]
    return [Request(i, t, p, o, token_ids=tuple(int(x) for x in rng.choice(ids, p)))
            for i, (t, p, o) in enumerate(spec)]


def run(backend, config, reqs, budget=None):
    sim = Simulation(config, backend, budget_tokens=budget, log_events=True)
    sim.add_trace(reqs)
    return sim, sim.run()


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_compute_and_analytic_schedule_alike_and_outputs_match_generate(smollm2, shakespeare_ids, preemption):
    cfg = smollm2.config
    cost = CostModel(cfg, get_gpu("h100"), kv_bytes_per_token(cfg, "fp32"))
    # 10 blocks of 8 tokens: requests 0 and 1 are admitted (8 blocks) and cannot both grow
    config = SchedulerConfig(num_blocks=10, block_size=8, watermark=0.0, max_num_batched_tokens=64,
                             preemption_mode=preemption, num_swap_blocks=16 if preemption == "swap" else 0)
    reqs = requests(shakespeare_ids[:2000])
    compute = ComputeBackend(smollm2, config.num_blocks, config.block_size, cost,
                             num_swap_blocks=config.num_swap_blocks)
    sim_c, res_c = run(compute, config, reqs)
    sim_a, res_a = run(AnalyticBackend(cost), config, reqs)
    assert sim_c.log == sim_a.log
    assert res_c.summary["preemptions"] > 0
    # batching, chunking, preemption and paging do not change a greedy continuation
    for r, seq in zip(reqs, sorted(sim_c.seqs, key=lambda s: s.seq_id)):
        alone = generate(smollm2, [list(r.token_ids)], r.output_tokens, stop_at_eos=False).tokens[0]
        assert seq.output_ids == alone, f"request {r.request_id}"


def test_compute_backend_with_eviction_keeps_budget(smollm2, shakespeare_ids):
    cfg = smollm2.config
    cost = CostModel(cfg, get_gpu("h100"), kv_bytes_per_token(cfg, "fp32"))
    config = SchedulerConfig(num_blocks=40, block_size=8)
    reqs = requests(shakespeare_ids[:2000])
    budget = 24
    compute = ComputeBackend(smollm2, config.num_blocks, config.block_size, cost)
    sim_c, res_c = run(compute, config, reqs, budget=budget)
    sim_a, res_a = run(AnalyticBackend(cost), config, reqs, budget=budget)
    assert sim_c.log == sim_a.log
    expected = [max(0, r.prompt_tokens + r.output_tokens - 1 - budget) for r in reqs]
    assert res_c.requests.evicted_tokens.tolist() == expected
    assert all(len(s.output_ids) == r.output_tokens for s, r in zip(sorted(sim_c.seqs, key=lambda s: s.seq_id), reqs))
