"""The profile's serving steps: a short slice of a real trace served in compute mode, each step's
composition and measured time kept as rows the calibrated cost model fits (tables serving_steps, under
the full cache and StreamingLLM, and serving_scored_steps, keeping attention scores under H2O; columns
as random_steps).

Why: the seeded random compositions of random_steps miss what a serving engine's steps look like
together (a long prompt's continuation chunk beside first chunks and a hundred decode rows of a
conversation's lengths). On 2026-12-06 (H100), the kept steps of a fidelity run timed again on
their own tables and on consecutive ones took the same time, and the law fitted to random steps
alone priced their mixed steps 3-12% fast; with another slice's trace steps among the fitted rows,
0-2% (bench/fidelity.py --in-place). The slice is the package's own trace (the first 2,000 requests
of the Azure 2023 conversation trace), rows SERVING_OFFSET on: bench/fidelity.py scores rows past
it and refuses an overlap.
"""

from __future__ import annotations

import time
from pathlib import Path

from engine.errors import ConfigError

SERVING_REQUESTS = 300  # ~17 s of an H100 per (KV dtype, policy) for SmolLM2-135M
# the package's trace from this row: rows 750-1050 hold 15.7% prompts over 2,048 tokens (p90 4,076), rows
# 0-300 6.3% (p90 1,314), the conversation trace's rows 7000-9000 20-27%: long prompts make the continuation
# chunks beside many decode rows that the profile of 2026-12-06 12:35 (rows 0-300) priced 3-4% fast under H2O.
# Chosen on those statistics (2026-12-06 13:40); measured at 13:56 (H100, rows 750-1050, all three policies):
# h2o's steps with prefill on fresh rows 9000-9500 -2.0 / -2.2% signed (fp16 / INT8), -3.3 / -4.0% with
# the 12:35 profile on rows 8500-9000, and every configuration's TTFT but fp16 StreamingLLM's within 5%
SERVING_OFFSET = 750
SERVING_RATE_SCALE = 40.0  # arrivals 40x faster: batches of 100-200 sequences, as bench/fidelity.py's
# table -> the policies served into it: StreamingLLM's steps (contexts capped, no scores) too since the H100
# run of 2026-12-06 12:35, whose streaming steps, alone unlike any fitted serving step, came out 2-3% fast
SERVING_POLICIES = {"serving_steps": ("full", "streaming"), "serving_scored_steps": ("h2o",)}
SERVING_BUDGET_TOKENS = 512  # H2O's budget (as bench/fidelity.py's)
SERVING_KV_MEM_GIB = 4.0


def serving_offset(trace: str | None, offset: int | None) -> int:
    """The first row served: SERVING_OFFSET of the package's trace, 0 of another, unless given."""
    return offset if offset is not None else SERVING_OFFSET if trace is None else 0


def serving_window(trace: str | None, offset: int) -> tuple[float, float] | None:
    """The arrival window that starts at row `offset` of the trace (None from row 0)."""
    if not offset:
        return None
    from workloads import DEFAULT_TRACE, read_trace

    arrivals = read_trace(trace or DEFAULT_TRACE).requests["arrival_s"]
    if offset >= len(arrivals):
        raise ConfigError(f"--serving-offset {offset}: the trace has {len(arrivals)} requests")
    return float(arrivals.iloc[offset]), float(arrivals.max()) + 1.0


def serving_point(model: str, gpu: str, kv_dtype: str, policy: str, requests: int, trace: str | None,
                  window: tuple[float, float] | None = None):
    """The simulation of the serving slice: compute mode, seeded random weights (timing does not
    depend on them), the package's trace unless `trace` names another, from the row that starts
    `window` (serving_window)."""
    from kvsim.options import CacheOptions, EngineOptions, WorkloadOptions
    from kvsim.simulate import Point

    engine = EngineOptions(model=model, backend="compute", gpu=gpu, kv_mem_gib=SERVING_KV_MEM_GIB,
                           max_num_seqs=256, random_weights=True)
    workload = WorkloadOptions(trace=trace, rate_scale=SERVING_RATE_SCALE, max_requests=requests,
                               window=window)
    return Point(f"serving-{policy}-{kv_dtype}", engine, CacheOptions(policy, kv_dtype, SERVING_BUDGET_TOKENS),
                 seed=0, workload=workload)


EAGER_WARMUP = ((1, 7, 16, 100, 1000), (0, 37, 1024))  # (chunk tokens, cached) of warm_eager_steps


def record_steps(sim, records: list) -> None:
    """Wrap a built simulation's backend: each step's (StepShape, measured seconds) into records (on
    the CPU, where compute mode prices steps with the cost model, the host's perf_counter, as a CPU
    profile times everything). On a GPU, eager steps' kernels are compiled first (warm_eager_steps)."""
    backend = sim.backend
    execute = backend.execute
    if backend.measure:
        warm_eager_steps(backend.runner, *EAGER_WARMUP)

    def recorded(scheduled, kv, swap_bytes: int = 0):
        shape = backend.shape(scheduled, kv, swap_bytes)
        began = time.perf_counter()
        result = execute(scheduled, kv, swap_bytes)
        records.append((shape, result.duration_s if backend.measure else time.perf_counter() - began))
        return result

    backend.execute = recorded


def release_device_memory() -> None:
    """Free a finished compute run's model and KV store before the next run allocates its own: a step
    recorder's wrapper and the backend refer to each other (a cycle only the collector frees, and GPU
    allocations do not count toward its thresholds). Without this, bench/fidelity.py's third
    llama-3.1-8b configuration of 16 GiB KV ran out of an H100's memory (2026-12-06)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def warm_eager_steps(runner, tokens, cached) -> None:
    """Prefill and mixed steps of assorted sizes run eagerly (slot -1 writes nowhere), so that
    Triton has compiled their variants before a step that runs eagerly (more tokens than a graph
    takes) is timed."""
    from engine.runner import StepInput

    block_size, graphs = runner.kv_store.block_size, runner.use_cuda_graphs
    runner.use_cuda_graphs = False
    try:
        for n in tokens:
            for c in cached:
                chunk = StepInput([0] * n, c, [-1] * n, [0] * -(-(c + n) // block_size), c + n)
                runner.run([chunk])
                runner.run([chunk, *[StepInput([0], 40, [-1], [0] * 3, 41) for _ in range(3)]])
    finally:
        runner.use_cuda_graphs = graphs


def serving_tables(model: str, gpu: str, kv_dtype: str, block_size: int, graph: dict, requests: int,
                   trace: str | None = None, window: tuple[float, float] | None = None) -> tuple[dict, dict]:
    """-> ({table: {column: values}}, notes): the serving slice run once per policy of
    SERVING_POLICIES; steps of more chunks than a row holds are left out (counted in the notes)."""
    from engine.profile_file import MAX_CHUNKS, TABLES, step_row
    from kvsim.simulate import run_point

    tables, notes = {}, {}
    for name, policies in SERVING_POLICIES.items():
        columns = {c: [] for c in TABLES[name]}
        for policy in policies:
            records: list = []
            result = run_point(serving_point(model, gpu, kv_dtype, policy, requests, trace, window),
                               on_build=lambda sim, r=records: record_steps(sim, r))
            release_device_memory()
            wide = 0
            for shape, seconds in records:
                if len(shape.prefill_chunks) > MAX_CHUNKS:
                    wide += 1
                    continue
                row = step_row(shape, block_size, graph.get("batch_buckets", ()), graph.get("min_width_blocks", 1))
                for column, value in zip(columns, (*row, seconds)):
                    columns[column].append(value)
            notes.setdefault(name, {})[policy] = {"steps": len(records), "left_out_wide": wide,
                                                  "requests_completed": int(result.summary["requests_completed"])}
        tables[name] = columns
    return tables, notes


def serving_settings(requests: int, trace: str | None, offset: int = 0) -> dict:
    """What the profile records of its serving slice (bench/fidelity.py reads rows and trace)."""
    from workloads import DEFAULT_TRACE

    return {"trace": Path(trace).name if trace else DEFAULT_TRACE.name, "shipped": trace is None,
            "rows": [offset, offset + requests], "rate_scale": SERVING_RATE_SCALE,
            "policies": {name: list(policies) for name, policies in SERVING_POLICIES.items()},
            "budget_tokens": SERVING_BUDGET_TOKENS,
            "kv_mem_gib": SERVING_KV_MEM_GIB}
