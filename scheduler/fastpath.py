"""Analytic fast path: advance k decode steps in one engine event when nothing can change.

Stepping one by one, a pure-decode batch repeats the same decisions until something happens:
an arrival or think time ends (the next SimPy event), a sequence finishes, the blocks needed to
grow run out, or a growing sequence reaches its eviction budget. Until the first of these the
outcome of every step is known in advance, so the run does the block bookkeeping once per
sequence (one append of k - 1 slots) instead of once per step, and still records every step,
token time and eviction exactly as the one-by-one loop would (tests/scheduler check that).

Sequences held at their eviction budget evict one token and fill its hole every step: their
blocks never change, so the run only counts those evictions (analytic mode tracks counts, not
which tokens go).
"""

from __future__ import annotations

import numpy as np

from engine.cost_model import StepShape


def _new_blocks(slots: int, extra: int, block_size: int) -> int:
    """Blocks a sequence holding `slots` takes to append `extra` more (numpy arrays broadcast)."""
    return -(-(slots + extra) // block_size) - -(-slots // block_size)


def decode_run(sim, out, first_duration_s: float):
    """A generator that runs k >= 2 decode steps, or None when the next step may differ."""
    sched, kv, env, config = sim.scheduler, sim.kv, sim.env, sim.config
    cost = getattr(sim.backend, "cost", None)
    if (cost is None or config.max_decode_run < 2 or not out.is_pure_decode or out.preempted
            or out.swapped_in or sched.swapped or (sched.waiting and not out.admission_blocked)
            or len(out.scheduled) != len(sched.running) or sim.evict_every != 1):
        return None
    k = min(config.max_decode_run, min(s.seq.remaining_outputs for s in out.scheduled))
    growing, held = [], []  # held: sequences at their budget
    context = longest_held = longest_growing = 0
    for s in out.scheduled:
        budget = sched.budget_of(s.seq.request)
        slots = kv.num_slots(s.seq.seq_id)
        context += slots
        if budget is not None and slots >= budget:
            held.append(s.seq)
            longest_held = max(longest_held, slots)
        else:
            longest_growing = max(longest_growing, slots)
            growing.append((s.seq, slots))
            if budget is not None:
                k = min(k, budget - slots + 1)
    if k < 2:
        return None
    size, available = config.block_size, kv.num_available_blocks
    while k >= 2 and sum(_new_blocks(n, k - 1, size) for _, n in growing) > available:
        k -= 1
    durations, t, horizon = [first_duration_s], env.now + first_duration_s, env.peek()
    batch = len(out.scheduled)
    keeps_scores = getattr(sim.backend, "keeps_scores", None)
    scored = bool(keeps_scores and keeps_scores(out.scheduled))
    while len(durations) < k and t < horizon:
        j = len(durations)  # every growing sequence holds j more slots than at the first step
        shape = StepShape(batch, batch, context + j * len(growing), num_decode_seqs=batch,
                          decode_max_context=max(longest_held, longest_growing + j if growing else 0), scored=scored)
        d = cost.step_time(shape)
        durations.append(d)
        t += d
    if len(durations) < 2:
        return None
    return _run(sim, out, durations, growing, held)


def _run(sim, out, durations, growing, held):
    kv, env, size = sim.kv, sim.env, sim.config.block_size
    k = len(durations)
    stats = kv.stats()
    free0, cached0, used0 = stats["blocks_free"], stats["blocks_cached"], stats["blocks_used"]
    for seq, _ in growing:  # the appends of steps 2..k, at once
        kv.append_slots(seq.seq_id, k - 1)
    # blocks taken by the appends of steps 2..j, for j = 1..k-1 ([k-1])
    slots = np.array([n for _, n in growing], dtype=np.int64).reshape(-1, 1)  # [G, 1]
    new = _new_blocks(slots, np.arange(k - 1, dtype=np.int64), size).sum(axis=0)  # [k - 1]
    taken_cached = np.maximum(new - free0, 0)
    times = []
    detail = tuple((s.seq.seq_id, 1) for s in out.scheduled)
    for j in range(1, k):  # steps 1..k-1: every sequence decodes one token, none finishes
        yield env.timeout(durations[j - 1])
        times.append(env.now)
        if sim.log is not None:
            sim._event("step", detail)  # step j + 1 starts now
    for s in out.scheduled:
        seq = s.seq
        seq.num_computed += k - 1
        seq.num_generated += k - 1
        seq.token_times_s.extend(times)
    for seq in held:  # each evicted one token a step and refilled its hole (blocks unchanged)
        seq.evicted_tokens += k - 1
    sched = sim.scheduler
    sim.steps.extend(k - 1, time_s=times, duration_s=durations[:-1], batch_size=len(out.scheduled),
                     prefill_tokens=0, decode_tokens=len(out.scheduled), blocks_used=(used0 + new).tolist(),
                     blocks_free=(free0 - new + taken_cached).tolist(), blocks_cached=(cached0 - taken_cached).tolist(),
                     num_running=len(sched.running), num_waiting=len(sched.waiting), num_swapped=len(sched.swapped),
                     swap_bytes=0, preempted=0, evicted_tokens=len(held))
    sim._step_index += k - 1
    # step k: its slots are in place (appended above); finish it the ordinary way
    yield env.timeout(durations[-1])
    sim.complete_step(out, durations[-1], (0, len(out.scheduled)))
