"""Fidelity of the analytic mode (issue 8): one slice of the Azure conversation trace replayed in
compute mode (the real model, each step timed with CUDA events) and in analytic mode (the
calibrated profile of this GPU), for fp16 and INT8 KV and the full, StreamingLLM and H2O policies
(H2O's steps keep attention scores: its own fitted rows, scored_steps).

    python bench/fidelity.py [--requests 500] [--offset 0] [--rate-scale 40] [--profile PATH] [--budget-s 330]
    python bench/fidelity.py --smoke     # on the CPU: random weights, a handful of requests
    python bench/fidelity.py --rescore bench/results/fidelity_h100.json \
        --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv          # on the CPU, see below
    # fresh rows past the shipped 2,000: --trace the full conv trace (carry it to the GPU), --offset 3500

Per step: every compute step's own composition (each decode sequence's context, each prefill
chunk) predicted by the calibrated cost model against its measured time: median and p95 of
|predicted / measured - 1|, by kind (decode-only, mixed, prefill-only). The profile's grid tables
are uniform batches and its fitted correction's rows (random_steps, scored_steps) are seeded random compositions;
the trace's steps are neither (a step equal to a grid point or a fitted composition is counted
and left out), so no scored composition was fitted to. End to end: output
throughput, TTFT p50/p99 and TPOT p50/p99 of the analytic run against the compute run. Writes
fidelity_<gpu>.json (fidelity_<model>_<gpu>.json for a --model other than SmolLM2-135M) to $OUT
(else bench/results/) after every configuration, and every compute step (composition, measured
seconds) to fidelity_steps_<gpu>.json beside it. With --replay, some
of the run's steps are timed again standalone (back to back, and after the GPU idled as long as it
did before them in the run: the host's scheduling and eviction time, recorded per step), which
separates the cost model's own error from the serving loop's effect on a step.

--rescore FILE replays the analytic side again on this machine (it needs no GPU) with the cost
model as it is now, against the compute run recorded in FILE and its steps file: how a change to
the cost model moves the errors, without a GPU. Its output says it is a rescore. --offset picks
the slice of the trace (rows offset .. offset + requests): a cost model designed while looking at
one slice's steps is scored on another; --trace names the trace file (the rescore needs the one
the run replayed). With --in-place N, every Nth step is kept with its own inputs and timed again
on the run's own tables after the run (back to back, as the profile times): in run vs in place
says what the serving loop does to a step (since steps are timed from the launch of their staged
inputs, about nothing: -3..+3% median, H100 2026-12-06). --sensitivity D adds analytic runs with every step
(1 - D) and (1 + D) times as long: how much each end-to-end metric moves for a uniform step error
of D (near saturation, TTFT moves several times more than the steps). Two floors under the analytic
side's end-to-end error: --repeat N runs each compute configuration N times more (how far the GPU's
own runs of the same slice differ), --jitter S runs the analytic side with each step times
(1 + S N(0,1)), seeded (how far step-to-step noise of S alone moves each metric; CPU, rescore too).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parents[1])  # import the repo's packages, not bench/

from bench.common import RESULTS, environment, write_json

E2E = ("output_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99")
DEFAULT_MODEL = "smollm2-135m"  # the real model of the package (random weights on a GPU run: --random-weights)
FLOORS = {"step_median": 0.05, "step_p95": 0.15, "e2e": 0.05}  # issue 8


class StepRecorder:
    """Wraps a compute backend's execute: each step's composition and measured duration, and the
    host time since the previous step returned (the serving loop's scheduling, eviction and
    bookkeeping, while the GPU idles: `gaps`). Before the run it warms what a timed step must not
    pay for: Triton compiles of the eager steps (the backend itself captures each CUDA graph before
    the step that needs it is timed)."""

    def __init__(self, eager_sizes: tuple, keep_every: int = 0):
        """keep_every: every that many steps, keep the step's own inputs (block tables included) for
        the in-place replay; 0 keeps none."""
        self.records: list[tuple] = []
        self.gaps: list[float] = []
        self.stage_host: dict[int, float] = {}  # step index -> host seconds of runner.stage (packing,
        # the input copy; before the step's timed span since 2026-12-06, inside it before)
        self.kept: dict[int, tuple] = {}  # step index -> (inputs, keeps scores, score windows)
        self.eager_sizes, self.keep_every = eager_sizes, keep_every

    def attach(self, sim) -> None:
        backend = self.backend = sim.backend
        from kvsim.profile_serving import warm_eager_steps

        warm_eager_steps(backend.runner, *self.eager_sizes)
        execute = backend.execute

        last = [None]

        def recorded(scheduled, kv, swap_bytes: int = 0):
            start = time.perf_counter()
            shape = backend.shape(scheduled, kv, swap_bytes)
            result = execute(scheduled, kv, swap_bytes)
            self.records.append((shape, result.duration_s))
            self.gaps.append(start - last[0] if last[0] is not None else 0.0)
            last[0] = time.perf_counter()
            return result

        backend.execute = recorded
        stage = self.stage = backend.runner.stage

        def kept(batch, score_out=None, score_windows=None):
            index = len(self.records)  # the step being executed: records has the ones before it
            if self.keep_every and index % self.keep_every == 0:
                copies = [dataclasses.replace(x, token_ids=list(x.token_ids), slots=list(x.slots),
                                              block_table=list(x.block_table)) for x in batch]
                self.kept[index] = (copies, score_out is not None, score_windows)
            start = time.perf_counter()
            out = stage(batch, score_out, score_windows)
            self.stage_host[index] = time.perf_counter() - start
            return out

        backend.runner.stage = kept


def replay_inputs(shape) -> tuple[list[int], list[int]]:
    """(seq_lens, new tokens) of a step with this shape's chunks and decode rows: the longest decode
    context, the others sharing the rest of the sum (what the cost model sees of a step)."""
    b, chunks = shape.num_decode_seqs, shape.prefill_chunks
    rest = [shape.decode_context_tokens - shape.decode_max_context] if b else []
    contexts = [shape.decode_max_context] * bool(b) + [rest[0] // (b - 1) + (i < rest[0] % (b - 1)) for i in range(b - 1)]
    return [c + n for c, n in chunks] + contexts, [n for _, n in chunks] + [1] * b


def by_kind(rows):
    """(kind, rows of it) for all steps, decode-only and mixed, where any; a row's first field is its kind."""
    for kind in ("all", "decode", "mixed"):
        sel = [r for r in rows if kind in ("all", r[0])]
        if sel:
            yield kind, sel


def deciles(x) -> dict:
    """Median, 10th and 90th percentile of relative differences."""
    return {"median": float(np.median(x)), "p10": float(np.percentile(x, 10)), "p90": float(np.percentile(x, 90))}


def replay(records, backend, kv_dtype: str, cost, count: int, reps: int, gaps=None) -> dict:
    """Diagnostic, fitted to nothing: `count` of the run's steps, spread over it, timed again
    standalone (a fresh store, blocks in order, `reps` times after a warm-up, as the profile times
    its steps), and again each after the GPU idled as long as it did before that step in the run
    (gaps: the host time before each step). Splits a step's error into the measurement's own
    spread (rep to rep), the serving loop's effect (in the run vs standalone; vs standalone after
    the same idle: what the idle GPU explains of it) and the cost model's error against the
    standalone median."""
    from engine.profile import StepBench, Timer

    every = max(1, len(records) // count)
    chosen = records[::every][:count]
    gaps = (gaps or [0.0] * len(records))[::every][:count]
    need = max(sum(-(-n // backend.store.block_size) for n in replay_inputs(s)[0]) for s, _ in chosen)
    bench = StepBench(backend.runner.model, kv_dtype, backend.store.block_size, need)
    timer, rows = Timer(bench.device, warmup=2, reps=reps), []
    for (shape, in_situ), gap in zip(chosen, gaps):
        seq_lens, new = replay_inputs(shape)
        if not bench.fits(seq_lens):
            continue
        step = bench.step(bench.inputs(seq_lens, new), scores=shape.scored)
        step(), step()  # captures its graph, warms
        times = timer.times(step)
        idle = float(np.median(timer.times(step, idle_s=gap))) if gap else float(np.median(times))
        rows.append((step_kind(shape), in_situ, float(np.median(times)), times, cost.step_time(shape), idle, gap))
    out = {"steps": len(rows), "reps": reps}
    for kind, sel in by_kind(rows):
        situ = np.array([r[1] / r[2] - 1 for r in sel])  # in the run vs standalone
        idle = np.array([r[1] / r[5] - 1 for r in sel])  # in the run vs standalone after the run's idle
        spread = np.array([t / r[2] - 1 for r in sel for t in r[3]])
        model = np.array([r[4] / r[2] - 1 for r in sel])
        out[kind] = {"steps": len(sel),
                     "in_run_vs_standalone": deciles(situ), "in_run_vs_standalone_after_idle": deciles(idle),
                     "idle_ms_median": float(np.median([r[6] for r in sel]) * 1e3),
                     "rep_spread_abs_p95": float(np.percentile(abs(spread), 95)),
                     "model_vs_standalone": {"abs_median": float(np.median(abs(model))),
                                             "abs_p95": float(np.percentile(abs(model), 95)),
                                             "signed_median": float(np.median(model))}}
    return out


def replay_in_place(recorder: StepRecorder, reps: int, cost) -> dict:
    """Diagnostic: the kept steps timed again on the run's own store and block tables (the blocks
    the run gave them, scattered over the pool after evictions and refills), back to back as the
    profile times its steps (TimedStep: staged, then timed from the launch, sampling and the tokens
    back to the host included as in the run). Against the standalone replay (blocks in order), this
    says whether the step's own tables or the serving loop around it make the in-run difference.
    Each again with its rows' tables moved to consecutive blocks (every row's own, in row order, as
    the profile lays them out; same rows, same lengths): what the run's scattered tables cost. And the
    cost model's prediction of each against both (the step's own composition, not an aggregate's
    reconstruction as in the standalone replay). Also the host's staging time (inputs packed and
    copied) in the run and here, warm. Keeps each step's rows (seq_len, new tokens) and times (main()
    writes them to fidelity_kept_<gpu>.json)."""
    from engine.profile import TimedStep, Timer

    backend, stage = recorder.backend, recorder.stage
    runner, timer, rows = backend.runner, Timer(backend.device, warmup=2, reps=reps), []

    def timed(batch, scored, windows) -> float:
        score_out = runner.score_buffers(batch) if scored else None
        runner.prepare_graph(batch, score_out, windows)
        step = TimedStep(runner, batch, score_out, backend.sampling, backend.generator, windows)
        step(), step()
        return float(np.median(timer.times(step)))

    for index, (batch, scored, windows) in sorted(recorder.kept.items()):
        shape, in_situ = recorder.records[index]
        measured = timed(batch, scored, windows)
        moved = consecutive_tables(batch, backend.store.block_size, backend.store.num_blocks)
        contiguous = timed(moved, scored, windows) if moved else float("nan")
        host, score_out = [], runner.score_buffers(batch) if scored else None
        for _ in range(reps):
            began = time.perf_counter()
            stage(batch, score_out, windows)
            host.append(time.perf_counter() - began)
        rows.append((step_kind(shape), in_situ / measured - 1, recorder.stage_host.get(index, float("nan")),
                     float(np.median(host)), measured / contiguous - 1, cost.step_time(shape),
                     [[x.seq_len, len(x.token_ids)] for x in batch], in_situ, measured, contiguous))
    out = {"steps": len(rows), "reps": reps}
    for kind, sel in by_kind(rows):
        moved = [r[4] for r in sel if np.isfinite(r[4])]
        out[kind] = {"steps": len(sel), "in_run_vs_in_place": deciles([r[1] for r in sel]),
                     "in_place_vs_consecutive_tables": deciles(moved) if moved else None,
                     "model_vs_in_run": deciles([r[5] / r[7] - 1 for r in sel]),
                     "model_vs_in_place": deciles([r[5] / r[8] - 1 for r in sel]),
                     "stage_host_ms": {"in_run": float(np.median([r[2] for r in sel]) * 1e3),
                                       "in_place": float(np.median([r[3] for r in sel]) * 1e3)}}
    out["kept"] = [{"kind": r[0], "rows": r[6], "in_run_s": r[7], "in_place_s": r[8],
                    "consecutive_s": r[9] if np.isfinite(r[9]) else None, "predicted_s": r[5]} for r in rows]
    return out


def consecutive_tables(batch, block_size: int, num_blocks: int):
    """The batch with each row's table moved to consecutive blocks from 0 (rows one after another;
    a block two rows share becomes two) and its slots with it; None if the pool is too small."""
    out, cursor = [], 0
    for x in batch:
        table = list(range(cursor, cursor + len(x.block_table)))
        cursor += len(table)
        index = {block: i for i, block in reversed(list(enumerate(x.block_table)))}  # first index of each
        slots = [s if s < 0 else table[index[s // block_size]] * block_size + s % block_size for s in x.slots]
        out.append(dataclasses.replace(x, slots=slots, block_table=table))
    return out if cursor <= num_blocks else None


def step_kind(shape) -> str:
    return "decode" if not shape.prefill_chunks else "mixed" if shape.num_decode_seqs else "prefill"


def step_errors(records, cost) -> dict:
    """|predicted / measured - 1| over the steps, by kind; steps equal to a fitted grid point left out."""
    from engine.calibrated import Correction

    tables = cost.profile.tables(cost.kv_dtype) if hasattr(cost, "profile") else {}
    tables = {name: t for name, t in tables.items() if name not in ("random_steps", "scored_steps")}
    correction = getattr(cost, "correction", None)
    fitted = correction.fitted if correction else set()
    grid = {name: set(zip(*(t[c] for c in t if c != "time_s"))) for name, t in tables.items()}
    rel, kinds, excluded, scored = [], [], 0, []
    for shape, measured in records:
        b, chunks = shape.num_decode_seqs, shape.prefill_chunks
        uniform = b and shape.decode_max_context * b == shape.decode_context_tokens
        key = None
        if not chunks and uniform:
            key = ("decode_step", (b, shape.decode_max_context))
        elif len(chunks) == 1 and not b:
            key = ("prefill_step", (chunks[0][1], chunks[0][0]))
        elif len(chunks) == 1 and uniform:
            key = ("mixed_step", (chunks[0][1], chunks[0][0], b, shape.decode_max_context))
        if key and key[1] in grid.get(key[0], ()) or Correction.key(shape) in fitted:
            excluded += 1
            continue
        rel.append(cost.step_time(shape) / measured - 1)
        kinds.append(step_kind(shape))
        scored.append((shape, measured))
    rel, kinds = np.asarray(rel), np.asarray(kinds)
    out = {"steps_scored": len(rel), "steps_equal_to_grid_points": excluded,
           "fit_rows": f"{len(fitted)} random compositions of the profile (random_steps, scored_steps), disjoint from the "
                       f"trace steps scored here", "correction": correction.describe() if correction else None}
    for kind in ("all", "decode", "mixed", "prefill"):
        r = rel if kind == "all" else rel[kinds == kind]
        if len(r):
            out[kind] = {"steps": len(r), "abs_median": float(np.median(abs(r))),
                         "abs_p95": float(np.percentile(abs(r), 95)), "signed_median": float(np.median(r))}
    out["first_of_graph"] = first_of_graph(scored, rel, cost)
    out["worst"] = [describe(*scored[i], float(rel[i])) for i in np.argsort(-abs(rel))[:10]]  # where it misses
    measured = sum(m for _, m in records)
    out["total_time_rel_error"] = float(sum(cost.step_time(s) for s, _ in records) / measured - 1) if measured else None
    return out


def first_of_graph(scored, rel, cost) -> dict | None:
    """The error of each CUDA graph's first step in the run against the others' (the first launch
    of a graph used to upload it inside the timed step), and what the first steps took beyond the
    model in all (None for a cost model that knows no graphs)."""
    if not hasattr(cost, "graph_table"):
        return None
    seen, first = set(), []
    for i, (shape, _) in enumerate(scored):
        seqs = shape.num_decode_seqs + len(shape.prefill_chunks)
        key = (cost.graph_table(shape), cost.graph_tokens(shape.num_tokens, seqs) if shape.prefill_chunks else 0)
        if key not in seen:
            seen.add(key)
            first.append(i)
    rest = np.ones(len(rel), bool)
    rest[first] = False
    excess = sum(measured - cost.step_time(shape) for shape, measured in (scored[i] for i in first))
    return {"graphs": len(first), "first_signed_median": float(np.median(rel[first])) if first else None,
            "others_signed_median": float(np.median(rel[rest])) if rest.any() else None,
            "first_excess_ms": 1e3 * excess}


def describe(shape, measured_s: float, rel_error: float) -> dict:
    """A scored step, for the list of the worst predictions."""
    b = shape.num_decode_seqs
    return {"rel_error": rel_error, "measured_s": measured_s, "decode_seqs": b,
            "decode_mean_context": shape.decode_context_tokens / b if b else 0,
            "decode_max_context": shape.decode_max_context, "chunks": [list(c) for c in shape.prefill_chunks]}


def capped_trace(path: Path, requests: int, max_prompt: int | None, max_output: int | None, folder: Path,
                 offset: int = 0) -> Path:
    """Rows offset .. offset + requests of an Azure-format trace, lengths capped, written beside the
    results (arrivals count from the slice's first row)."""
    import pandas as pd

    rows = pd.read_csv(path, skiprows=range(1, offset + 1), nrows=requests)
    assert len(rows) == requests, f"{path.name} has {len(rows)} rows past row {offset}, not {requests}"
    if max_prompt:
        rows["ContextTokens"] = rows["ContextTokens"].clip(upper=max_prompt)
    if max_output:
        rows["GeneratedTokens"] = rows["GeneratedTokens"].clip(upper=max_output)
    out = folder / f"trace_{offset}+{requests}_p{max_prompt}_o{max_output}.csv"
    rows.to_csv(out, index=False)
    return out


def smoke_profile(folder: Path, kv_dtypes: str) -> Path:
    """A CPU-timed profile of smollm2-135m on a tiny grid (only to run the pipeline)."""
    from kvsim.cli import main as kvsim

    out = folder / "smollm2-135m_h100.json"
    code = kvsim(["profile", "--model", "smollm2-135m", "--allow-cpu", "--gpu", "h100", "--kv-dtypes", kv_dtypes,
                  "--batches", "1,4", "--contexts", "16,64", "--prefill-tokens", "8,32,64",
                  "--prefill-cached", "0,32", "--warmup", "0", "--reps", "1", "--out", str(out)])
    assert code == 0, "kvsim profile failed"
    return out


def output_name(model: str, machine: str) -> str:
    """fidelity_<gpu>.json for the default model (SmolLM2-135M), fidelity_<model>_<gpu>.json for another."""
    return f"fidelity_{machine}.json" if model == DEFAULT_MODEL else f"fidelity_{model}_{machine}.json"


def make_point(args, kv: str, policy: str, trace: Path, gpu: str, backend: str):
    from kvsim.options import CacheOptions, EngineOptions, WorkloadOptions
    from kvsim.simulate import Point

    engine = EngineOptions(model=args.model, backend=backend, gpu=gpu, kv_mem_gib=args.kv_mem_gib,
                           max_num_seqs=args.max_num_seqs, random_weights=args.random_weights)
    return Point(f"{policy}-{kv}", engine, CacheOptions(policy, kv, args.budget), seed=0,
                 workload=WorkloadOptions(trace=str(trace), rate_scale=args.rate_scale))


def run_config(args, kv: str, policy: str, trace: Path, gpu: str) -> tuple[dict, list]:
    """The compute run of one configuration, then its scoring -> (result row, step records)."""
    from kvsim.profile_serving import EAGER_WARMUP
    from kvsim.simulate import run_point

    recorder = StepRecorder(((1, 7), (0, 37)) if args.smoke else EAGER_WARMUP,
                            keep_every=max(0, args.in_place))
    start = time.perf_counter()
    compute = run_point(make_point(args, kv, policy, trace, gpu, "compute"), on_build=recorder.attach)
    batch = compute.steps.batch_size
    measured = {"summary": {k: compute.summary[k] for k in (*E2E, "requests_completed", "preemptions", "cost_model")},
                "num_steps": len(compute.steps), "batch_size_median": float(batch.median()),
                "batch_size_max": int(batch.max()), "wall_s": time.perf_counter() - start}
    gaps = np.array(recorder.gaps[1:] or [0.0]) * 1e3
    measured["host_gap_ms"] = {"median": float(np.median(gaps)), "p90": float(np.percentile(gaps, 90))}
    row = score(args, kv, policy, trace, gpu, measured, recorder.records)
    if args.repeat:
        again = [run_point(make_point(args, kv, policy, trace, gpu, "compute")).summary for _ in range(args.repeat)]
        row["compute_repeat"] = {k: [r[k] / measured["summary"][k] - 1 for r in again] for k in E2E}
    if args.replay:
        row["replay"] = replay(recorder.records, recorder.backend, kv, analytic_cost(args, gpu, kv), args.replay,
                               3 if args.smoke else 5, recorder.gaps)
    if recorder.kept:
        row["replay_in_place"] = replay_in_place(recorder, 3 if args.smoke else 5, analytic_cost(args, gpu, kv))
    return row, recorder.records


def analytic_cost(args, gpu: str, kv: str):
    """The cost model the analytic side uses (the profile named by $KVSIM_PROFILES or shipped)."""
    from engine.cost_model import cost_model_for
    from engine.gpus import get_gpu
    from kvsim.simulate import model_config

    return cost_model_for(model_config(args.model), get_gpu(gpu), kv)


def score(args, kv: str, policy: str, trace: Path, gpu: str, measured: dict, records: list) -> dict:
    """The analytic run of the same configuration and the errors against the compute run."""
    from kvsim.simulate import run_point

    analytic = run_point(make_point(args, kv, policy, trace, gpu, "analytic"))
    cost = analytic_cost(args, gpu, kv)
    again = lambda: run_point(make_point(args, kv, policy, trace, gpu, "analytic")).summary
    sensitivity, jitter = {}, {}
    for factor in (1 - args.sensitivity, 1 + args.sensitivity) if args.sensitivity else ():
        with scaled_steps(lambda f=factor: f):
            summary = again()
        sensitivity[f"{factor:g}"] = {k: summary[k] / analytic.summary[k] - 1 for k in E2E}
    if args.jitter:
        runs = []
        for seed in range(args.jitter_seeds):
            rng = np.random.default_rng(seed)
            with scaled_steps(lambda: 1 + args.jitter * rng.standard_normal()):
                runs.append(again())
        jitter = {"sigma": args.jitter, "seeds": args.jitter_seeds,
                  "rel": {k: [r[k] / analytic.summary[k] - 1 for r in runs] for k in E2E}}
    compute = measured["summary"]
    e2e = {k: {"compute": compute[k], "analytic": analytic.summary[k],
               "rel_error": analytic.summary[k] / compute[k] - 1} for k in E2E}
    return {"kv_dtype": kv, "policy": policy, "budget_tokens": None if policy == "full" else args.budget,
            "cost_model": cost.source, "compute_cost_note": compute["cost_model"],
            "requests_completed": {"compute": compute["requests_completed"],
                                   "analytic": analytic.summary["requests_completed"]},
            "num_steps": {"compute": measured["num_steps"], "analytic": len(analytic.steps)},
            "preemptions": {"compute": compute["preemptions"], "analytic": analytic.summary["preemptions"]},
            "batch_size_median": measured["batch_size_median"], "batch_size_max": measured["batch_size_max"],
            "step_error": step_errors(records, cost), "e2e": e2e, "measured": measured,
            **({"e2e_sensitivity": sensitivity} if sensitivity else {}),
            **({"e2e_jitter": jitter} if jitter else {}),
            "wall_s": {"compute": measured["wall_s"], "analytic": analytic.summary["wall_time_s"]}}


@contextlib.contextmanager
def scaled_steps(factor):
    """Every analytic step takes factor() times its cost model's time (--sensitivity: a constant;
    --jitter: seeded noise, one draw a step)."""
    from engine.calibrated import CalibratedCostModel
    from engine.cost_model import CostModel

    saved = {cls: cls.step_time for cls in (CalibratedCostModel, CostModel)}
    for cls, step_time in saved.items():
        cls.step_time = lambda self, s, _f=step_time: factor() * _f(self, s)
    try:
        yield
    finally:
        for cls, step_time in saved.items():
            cls.step_time = step_time


def records_json(records) -> list:
    """Compute steps as [StepShape fields..., measured seconds] (chunks as lists)."""
    return [[*(list(map(list, v)) if isinstance(v, tuple) else v for v in dataclasses.astuple(shape)), seconds]
            for shape, seconds in records]


def records_from_json(rows) -> list:
    """records_json's rows back (rows written before StepShape.scored existed read as unscored)."""
    from engine.cost_model import StepShape

    names = [f.name for f in dataclasses.fields(StepShape)]
    out = []
    for row in rows:
        fields = dict(zip(names, row[:-1]))
        fields["prefill_chunks"] = tuple(tuple(c) for c in fields["prefill_chunks"])
        out.append((StepShape(**fields), row[-1]))
    return out


def use_profile(path: str, gpu: str) -> None:
    """The analytic side's profile ($KVSIM_PROFILES); one of another GPU is an error (the cost model
    looks profiles up by GPU and would pass it over, silently using the shipped one)."""
    from engine.profile_file import load_profile

    named = load_profile(Path(path))
    if named.gpu != gpu:
        sys.exit(f"fidelity: --profile {path} is a {named.gpu} profile; the run is on {gpu}")
    os.environ["KVSIM_PROFILES"] = str(Path(path).resolve())


FULL_AZURE_CONV = "AzureLLMInferenceTrace_conv.csv"  # the package's trace is its first 2,000 rows


def check_disjoint(args, source: Path, gpu: str) -> None:
    """Refuse a slice whose requests the analytic side's profile fitted (its serving_steps: the first
    rows of the package's trace, kvsim/profile_serving.py): the issue's rule, no fitted composition
    scored."""
    from engine.profile_file import find_profile
    from kvsim.simulate import model_config
    from workloads import DEFAULT_TRACE

    profile = find_profile(model_config(args.model).name, gpu)  # the file the analytic side reads, every dtype
    serving = profile.data.get("settings", {}).get("serving_steps") if profile else None
    if not serving or not serving.get("shipped") or source.name not in (DEFAULT_TRACE.name, FULL_AZURE_CONV):
        return
    first, end = serving["rows"]
    if args.offset < end and args.offset + args.requests > first:
        sys.exit(f"fidelity: rows {args.offset}-{args.offset + args.requests} of {source.name} overlap rows "
                 f"{first}-{end}, whose steps the profile ({profile.path.name}) fitted; take --offset "
                 f"{end} or more (rows past 2,000: --trace the full {FULL_AZURE_CONV})")


def trace_source(args) -> Path:
    """--trace (an Azure-format CSV: the full conversation trace holds fresh rows past the 2,000
    the package ships) or the shipped one."""
    from workloads import DEFAULT_TRACE

    source = Path(args.trace) if args.trace else DEFAULT_TRACE
    if not source.is_file():
        sys.exit(f"fidelity: --trace {source}: no such file")
    return source


def rescore(args) -> None:
    """The analytic side again, on this machine, against a recorded compute run (see the docstring)."""
    from bench.common import environment as env

    path = Path(args.rescore)
    recorded = json.loads(path.read_text())
    steps = json.loads(path.with_name(path.name.replace("fidelity_", "fidelity_steps_")).read_text())
    for key in ("model", "requests", "rate_scale", "max_num_seqs", "kv_mem_gib"):
        setattr(args, key, recorded[key])
    args.max_prompt, args.max_output = recorded["max_prompt_tokens"], recorded["max_output_tokens"]
    args.offset, args.random_weights = recorded.get("offset", 0), recorded["weights"] == "random"
    if args.profile:
        use_profile(args.profile, recorded["gpu_preset"])
    source = trace_source(args)
    if source.name != recorded["trace"]:
        sys.exit(f"fidelity: {path} replayed {recorded['trace']}; name that file with --trace (given: {source})")
    check_disjoint(args, source, recorded["gpu_preset"])
    trace = capped_trace(source, args.requests, args.max_prompt, args.max_output,
                         Path(tempfile.mkdtemp(prefix="fidelity-")), args.offset)
    result = {**recorded, "rescored": {**env(), "of": path.name}, "configs": []}
    print(f"rescore of {path} (compute run of {recorded['date']} on {recorded.get('gpu')}) with the cost model as it is now")
    for row in recorded["configs"]:
        if "error" in row or "measured" not in row:
            continue
        args.budget = row["budget_tokens"] or args.budget
        records = records_from_json(steps[f"{row['kv_dtype']}/{row['policy']}"])
        new = score(args, row["kv_dtype"], row["policy"], trace, recorded["gpu_preset"], row["measured"], records)
        result["configs"].append(new)
        print_row(new)
    out = Path(os.environ.get("OUT") or tempfile.gettempdir()) / path.name.replace(".json", "_rescored.json")
    write_json(out, result)
    print(f"wrote {out}")


def print_row(r: dict) -> None:
    s, e = r["step_error"].get("all", {}), r["e2e"]
    pct = lambda x: f"{100 * x:+6.1f}%"
    print(f"{r['kv_dtype']:5s} {r['policy']:9s} {r['num_steps']['compute']:6d} "
          f"{r['batch_size_median']:5.0f}/{r['batch_size_max']:<4d} "
          f"{100 * s.get('abs_median', float('nan')):6.1f}% {100 * s.get('abs_p95', float('nan')):6.1f}%  "
          + " ".join(pct(e[k]["rel_error"]) for k in E2E), flush=True)
    for kind in ("decode", "mixed", "prefill"):
        k = r["step_error"].get(kind)
        if k:
            print(f"      {kind:8s} {k['steps']:5d} steps: |err| median {100 * k['abs_median']:5.1f}%, "
                  f"p95 {100 * k['abs_p95']:5.1f}%, signed median {100 * k['signed_median']:+5.1f}%")
    first = r["step_error"].get("first_of_graph")
    if first and first["first_signed_median"] is not None:
        others = first["others_signed_median"]
        print(f"      first step of each of {first['graphs']} graphs: signed median {100 * first['first_signed_median']:+.1f}% "
              f"(others {100 * (others or 0):+.1f}%), {first['first_excess_ms']:.1f} ms over the model in all")
    print(f"      fit rows: {r['step_error']['fit_rows']}; correction {r['step_error']['correction']}")
    for factor, moved in r.get("e2e_sensitivity", {}).items():
        print(f"      every step x{factor}: " + ", ".join(f"{k} {100 * v:+.1f}%" for k, v in moved.items()))
    widest = lambda runs: ", ".join(f"{k} {100 * max(v, key=abs):+.1f}%" for k, v in runs.items())
    if "compute_repeat" in r:
        print(f"      compute run again ({len(r['compute_repeat'][E2E[0]])}x), widest vs the first: "
              + widest(r["compute_repeat"]))
    if "e2e_jitter" in r:
        j = r["e2e_jitter"]
        print(f"      analytic with each step x(1 + {j['sigma']:g} N(0,1)) ({j['seeds']} seeds), widest: " + widest(j["rel"]))
    gap = r["measured"].get("host_gap_ms")
    if gap:
        print(f"      host time between steps (GPU idle): median {gap['median']:.2f} ms, p90 {gap['p90']:.2f} ms")
    spread = lambda d: f"median {100 * d['median']:+5.1f}% (p10 {100 * d['p10']:+5.1f}%, p90 {100 * d['p90']:+5.1f}%)"
    for kind in ("all", "decode", "mixed"):
        k, place = r.get("replay", {}).get(kind), r.get("replay_in_place", {}).get(kind)
        if k:
            model = k["model_vs_standalone"]
            print(f"      replay {kind:6s} {k['steps']:3d} steps: in run / standalone - 1 {spread(k['in_run_vs_standalone'])}; "
                  f"rep spread p95 {100 * k['rep_spread_abs_p95']:4.1f}%; model vs standalone |err| median "
                  f"{100 * model['abs_median']:4.1f}% p95 {100 * model['abs_p95']:4.1f}%")
        if place:
            print(f"      replay {kind:6s} in place ({place['steps']} steps on the run's own tables): in run / in place - 1 "
                  f"{spread(place['in_run_vs_in_place'])}")
            if place.get("in_place_vs_consecutive_tables"):
                print(f"      replay {kind:6s} in place / on consecutive tables - 1 "
                      f"{spread(place['in_place_vs_consecutive_tables'])}")
            if "model_vs_in_place" in place:
                print(f"      replay {kind:6s} model / in run - 1 {spread(place['model_vs_in_run'])}; "
                      f"model / in place - 1 {spread(place['model_vs_in_place'])}")
            if "stage_host_ms" in place:
                host = place["stage_host_ms"]
                print(f"      replay {kind:6s} host staging (untimed): {host['in_run']:.2f} ms in the run, "
                      f"{host['in_place']:.2f} ms warm")
        if k and "in_run_vs_standalone_after_idle" in k:
            print(f"      replay {kind:6s} after the run's idle GPU (median {k['idle_ms_median']:.2f} ms): in run / "
                  f"standalone - 1 {spread(k['in_run_vs_standalone_after_idle'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--trace", default=None,
                        help="an Azure-format trace CSV (default: the shipped first 2,000 rows of the conv trace)")
    parser.add_argument("--offset", type=int, default=0, help="trace rows to skip first")
    parser.add_argument("--rate-scale", type=float, default=40.0, help="arrivals this many times faster")
    parser.add_argument("--kv-dtypes", default="fp16,int8")
    parser.add_argument("--policies", default="full,streaming,h2o")
    parser.add_argument("--budget", type=int, default=512, help="the evicting policies' token budget")
    parser.add_argument("--kv-mem-gib", type=float, default=4.0)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-prompt", type=int, default=None, help="cap prompt tokens (reported)")
    parser.add_argument("--max-output", type=int, default=None, help="cap output tokens (reported)")
    parser.add_argument("--profile", default=None, help="profile file to use (else shipped / $KVSIM_PROFILES)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="start no configuration after this")
    parser.add_argument("--random-weights", action="store_true",
                        help="seeded random weights of the model's shape (the same kernels and timings; for a "
                             "device the real weights cannot reach)")
    parser.add_argument("--replay", type=int, default=60,
                        help="steps of each run timed again standalone (diagnostic: rep spread, in-run vs standalone); 0: none")
    parser.add_argument("--in-place", type=int, default=25,
                        help="every this many steps, time the step again on the run's own tables (diagnostic); 0: none")
    parser.add_argument("--repeat", type=int, default=0,
                        help="run each compute configuration this many times more: how far the measured end-to-end "
                             "metrics move between two runs of the same slice (the floor under the analytic error)")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="also run the analytic side with each step times (1 + this x N(0,1)), seeded: how far "
                             "step-to-step noise alone moves each end-to-end metric (e.g. 0.01)")
    parser.add_argument("--jitter-seeds", type=int, default=5, help="seeds of --jitter (0, 1, ...)")
    parser.add_argument("--smoke", action="store_true", help="CPU, random weights, 8 short requests")
    parser.add_argument("--rescore", default=None, help="a fidelity JSON: replay its analytic side again (CPU)")
    parser.add_argument("--sensitivity", type=float, default=0.0,
                        help="also run the analytic side with every step (1 -/+ this) times as long: how much each "
                             "end-to-end metric moves for a uniform step error (e.g. 0.03)")
    args = parser.parse_args()
    if args.rescore:
        return rescore(args)
    import torch

    from engine.gpus import get_gpu
    from kvsim.profile_serving import release_device_memory

    start = time.perf_counter()
    source = trace_source(args)
    cuda = torch.cuda.is_available()
    gpu = get_gpu(torch.cuda.get_device_name()).name if cuda else "h100"
    work = Path(tempfile.mkdtemp(prefix="fidelity-"))
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else work if args.smoke else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.requests, args.rate_scale, args.kv_mem_gib, args.max_num_seqs = 8, 1000.0, 0.05, 8
        args.random_weights, args.replay, args.in_place = True, min(args.replay, 3), min(args.in_place, 2)
        if args.kv_dtypes == "fp16,int8":  # fp16 matmuls crawl on a CPU
            args.kv_dtypes = "fp32,int8"
        args.max_prompt, args.max_output = args.max_prompt or 40, args.max_output or 3
        args.profile = args.profile or str(smoke_profile(work, args.kv_dtypes))
    if args.profile:
        use_profile(args.profile, gpu)
    check_disjoint(args, source, gpu)
    trace = capped_trace(source, args.requests, args.max_prompt, args.max_output, work, args.offset)
    result = {"benchmark": "fidelity", **environment(), "gpu_preset": gpu, "model": args.model,
              "weights": "random" if args.random_weights else "real", "trace": source.name,
              "requests": args.requests, "offset": args.offset, "rate_scale": args.rate_scale, "max_prompt_tokens": args.max_prompt,
              "max_output_tokens": args.max_output, "kv_mem_gib": args.kv_mem_gib, "max_num_seqs": args.max_num_seqs,
              "floors": FLOORS, "configs": [], "complete": False}
    path = out_dir / output_name(args.model, gpu if cuda else "cpu_smoke")
    steps_path, steps = path.with_name(path.name.replace("fidelity_", "fidelity_steps_")), {}
    kept_path, kept = path.with_name(path.name.replace("fidelity_", "fidelity_kept_")), {}
    print(f"fidelity: {args.model} on {result.get('gpu', 'cpu')}, {args.requests} requests of {source.name} "
          f"at {args.rate_scale}x, caps prompt {args.max_prompt} / output {args.max_output}; writing {path}")
    print(f"{'kv':5s} {'policy':9s} {'steps':>6s} {'batch':>10s} {'|err| med':>7s} {'p95':>7s}  "
          + " ".join(f"{k.replace('_per_s', '/s').replace('_ms', '')[:7]:>7s}" for k in E2E))
    # policy by policy (fp16 and INT8 of full, then of streaming, ...): a budget cut drops the last policy
    configs = [(kv, p) for p in args.policies.split(",") for kv in args.kv_dtypes.split(",")]
    last = 0.0
    for kv, policy in configs:
        if time.perf_counter() - start + last > args.budget_s:
            print(f"budget: {args.budget_s:.0f} s reached; {kv}/{policy} and later not run")
            break
        began = time.perf_counter()
        try:
            row, records = run_config(args, kv, policy, trace, gpu)
            steps[f"{kv}/{policy}"] = records_json(records)
            steps_path.write_text(json.dumps(steps))  # compact: thousands of rows
            if row.get("replay_in_place", {}).get("kept"):  # each kept step's rows: compact, beside it
                kept[f"{kv}/{policy}"] = row["replay_in_place"].pop("kept")
                kept_path.write_text(json.dumps(kept))
        except Exception as e:  # noqa: BLE001 - one failed configuration must not lose the others
            result["configs"].append({"kv_dtype": kv, "policy": policy, "error": f"{type(e).__name__}: {e}"})
            print(f"{kv} {policy}: FAILED {type(e).__name__}: {e}", flush=True)
        else:
            result["configs"].append(row)
            print_row(row)
        release_device_memory()  # the finished configuration's model and KV store
        last = time.perf_counter() - began
        result["wall_s"] = time.perf_counter() - start
        write_json(path, result)
    result["complete"] = len(result["configs"]) == len(configs) and all("error" not in c for c in result["configs"])
    result["wall_s"] = time.perf_counter() - start
    write_json(path, result)
    print(f"wrote {path} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
