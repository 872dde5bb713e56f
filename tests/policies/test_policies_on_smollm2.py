"""Every policy through prefill + decode on the real SmolLM2 (CPU), inside the simulation."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backends.compute import ComputeBackend
from engine.cost_model import CostModel
from engine.gpus import get_gpu
from kvcache.policies import POLICY_NAMES, make_policy
from kvcache.sizing import kv_bytes_per_token
from scheduler.config import SchedulerConfig
from scheduler.request import Request
from scheduler.simulation import Simulation

BUDGET, BLOCK = 20, 4


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_policy_runs_and_frees_memory(smollm2, shakespeare_ids, name):
    cfg = smollm2.config
    policy = make_policy(name, seed=1) if name == "random" else make_policy(name)
    backend = ComputeBackend(smollm2, 64, BLOCK, CostModel(cfg, get_gpu("h100"), kv_bytes_per_token(cfg, "fp32")),
                             policy=policy)
    budget = None if name == "full" else BUDGET
    sim = Simulation(SchedulerConfig(num_blocks=64, block_size=BLOCK), backend, budget_tokens=budget)
    prompts = [shakespeare_ids[:30], shakespeare_ids[100:111]]
    sim.add_trace([Request(i, 0.0, len(p), 16, token_ids=tuple(p)) for i, p in enumerate(prompts)])
    blocks_held, chosen = [], []
    select = backend.select_evictions

    def spy(seq_id, kv, n):
        slots = select(seq_id, kv, n)
        chosen.append((seq_id, sorted(np.asarray(kv.slot_positions(seq_id))[slots].tolist())))
        return slots

    backend.select_evictions = spy
    orig = sim.scheduler.postprocess

    def watch(out, now, token_ids=None):
        done = orig(out, now, token_ids)
        blocks_held.extend(len(sim.kv.block_table(s.seq.seq_id)) for s in out.scheduled if s.seq.seq_id in sim.kv)
        return done

    sim.scheduler.postprocess = watch
    res = sim.run()
    sim.kv.check_invariants()
    df = res.requests
    assert (df.status == "finished").all() and (df.output_tokens == 16).all()
    if name == "full":
        assert df.evicted_tokens.sum() == 0 and not chosen
        return
    assert df.evicted_tokens.tolist() == [30 + 16 - 1 - BUDGET, 11 + 16 - 1 - BUDGET]
    assert max(blocks_held) <= -(-BUDGET // BLOCK) + 1 or max(blocks_held) <= -(-30 // BLOCK)
    evicted_positions = [p for _, ps in chosen for p in ps]
    if name == "streaming":
        assert min(evicted_positions) >= 4  # sinks stay
    if not policy.needs:  # a positional rule is chosen from the slots' positions: no per-slot scores kept
        assert not backend.scores
    if name == "window":
        assert 0 in evicted_positions
    assert res.kv_stats["blocks_used"] == 0  # everything freed at the end
