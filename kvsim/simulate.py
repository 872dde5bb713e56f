"""One simulation point: a workload (a trace, or closed-loop sessions), an engine and a KV cache
choice, run to a `PointResult`. A `Point` is plain picklable data, so local processes and Ray
workers run exactly what a serial run would, and get the same numbers."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from engine.errors import ConfigError, KvsimError
from kvsim.options import CacheOptions, EngineOptions, WorkloadOptions


def cost_model_note(backend: str, cost_source: str) -> str:
    """Where step times come from, for tables and reports (cost_source: the cost model's .source,
    a calibrated profile or the roofline)."""
    if backend == "compute":
        import torch

        if torch.cuda.is_available():
            return f"measured on {torch.cuda.get_device_name()} (CUDA events)"
    return cost_source


@dataclass(frozen=True)
class Point:
    """Everything one simulation needs. Exactly one of `workload` / `sessions` is set."""

    key: str  # file-name-safe and unique within a run: "h2o-int8-b512", "full-fp16-n64"
    engine: EngineOptions
    cache: CacheOptions
    seed: int
    workload: WorkloadOptions | None = None
    sessions: object | None = None  # kvsim.closed_loop.SessionOptions
    num_clients: int | None = None

    def spec(self) -> dict:
        """What determines the result (a finished point is reused only if this is unchanged)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def params(self) -> dict:
        evicting = self.cache.policy != "full"
        out = {"policy": self.cache.policy, "kv_dtype": self.cache.kv_dtype,
               "budget_tokens": self.cache.budget if evicting else None}
        if self.num_clients is not None:
            out["num_sessions"] = self.num_clients
        return out


@dataclass
class PointResult:
    key: str
    params: dict
    summary: dict
    requests: pd.DataFrame
    steps: pd.DataFrame
    sessions: pd.DataFrame

    def record(self) -> dict:
        """The point's JSON object: its parameters, then its summary."""
        return {**self.params, **self.summary}


def key_of(cache: CacheOptions, suffix: str = "") -> str:
    key = f"{cache.policy}-{cache.kv_dtype}" + ("" if cache.policy == "full" else f"-b{cache.budget}")
    return key + suffix


# ---- workloads --------------------------------------------------------------------------------------
def trace_path(workload: WorkloadOptions) -> Path:
    if workload.trace is None:
        from workloads import DEFAULT_TRACE

        return DEFAULT_TRACE
    return Path(workload.trace)


def existing_trace(workload: WorkloadOptions) -> Path:
    path = trace_path(workload)
    if not path.is_file():
        raise KvsimError(f"trace {path}: no such file")
    return path


def load_trace(workload: WorkloadOptions):
    """The trace after --window, --max-requests and --rate-scale."""
    from workloads import read_trace, scale_rate, window

    path = existing_trace(workload)
    trace = read_trace(path, workload.trace_format, skip_invalid=workload.skip_invalid)
    if workload.window:
        trace = window(trace, *workload.window)
    if workload.max_requests:
        trace = trace.with_requests(trace.requests.iloc[:workload.max_requests])
    if workload.rate_scale != 1:
        trace = scale_rate(trace, workload.rate_scale)
    if len(trace) == 0:
        raise KvsimError(f"trace {path}: no requests left after --window / --max-requests")
    return trace


# ---- the engine -------------------------------------------------------------------------------------
def backend_name(engine: EngineOptions) -> str:
    if engine.backend != "auto":
        return engine.backend
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "analytic"
    import torch

    return "compute" if torch.cuda.is_available() else "analytic"


def num_blocks(engine: EngineOptions, model, kv_dtype: str) -> int:
    from kvcache.sizing import kv_bytes_per_block

    if engine.kv_blocks is not None:
        return engine.kv_blocks
    per_block = kv_bytes_per_block(model, kv_dtype, engine.block_size)
    if engine.kv_mem_gib is not None:
        blocks = int(engine.kv_mem_gib * 2**30 // per_block)
        if blocks < 1:
            raise ConfigError(f"engine.kv_mem_gib: {engine.kv_mem_gib} GiB holds no block of {per_block} bytes")
        return blocks
    from engine.gpus import get_gpu
    from scheduler.build import kv_blocks_for_gpu

    util = 0.9 if engine.gpu_mem_util is None else engine.gpu_mem_util
    return kv_blocks_for_gpu(model, get_gpu(engine.gpu), kv_dtype, engine.block_size, util)


def scheduler_fields(engine: EngineOptions, model, blocks: int, prefix_block_size: int | None) -> dict:
    return dict(num_blocks=blocks, block_size=engine.block_size, max_num_seqs=engine.max_num_seqs,
                max_num_batched_tokens=engine.max_num_batched_tokens,
                max_model_len=engine.max_model_len or model.max_position_embeddings,
                enable_chunked_prefill=engine.chunked_prefill, preemption_mode=engine.preemption,
                num_swap_blocks=engine.swap_blocks, enable_prefix_caching=engine.prefix_cache,
                prefix_id_block_size=prefix_block_size or 512)


def build_simulation(point: Point, model, prefix_block_size: int | None):
    """(Simulation, backend name, number of blocks) for a point."""
    from scheduler.build import analytic_simulation

    engine, cache = point.engine, point.cache
    budget = None if cache.policy == "full" else cache.budget
    blocks = num_blocks(engine, model, cache.kv_dtype)
    fields = scheduler_fields(engine, model, blocks, prefix_block_size)
    backend = backend_name(engine)
    if backend == "analytic":
        sim = analytic_simulation(model, engine.gpu, cache.kv_dtype, budget_tokens=budget,
                                  sink_tokens=engine.sink_tokens, policy=cache.policy if budget is not None else None, **fields)
    else:
        from kvsim.compute import compute_simulation

        sim = compute_simulation(point, model, fields, budget)
    return sim, backend, blocks


def model_config(name: str):
    from engine.config import PRESETS

    if name in PRESETS:
        return PRESETS[name]
    from engine.loader import load_config

    return load_config(name)


# ---- running ----------------------------------------------------------------------------------------
def _open_loop(point: Point, model):
    """A trace replayed at its arrival times: (sim, backend, blocks, until=None, total requests)."""
    from scheduler.build import requests_from_table

    trace = load_trace(point.workload)
    sim, backend, blocks = build_simulation(point, model, trace.prefix_block_size)
    requests = requests_from_table(trace.requests)
    if backend == "compute":
        from kvsim.compute import with_prompt_tokens

        requests = with_prompt_tokens(trace, requests, point)
    sim.add_trace(requests)
    return sim, backend, blocks, None, len(requests)


def _closed_loop(point: Point, model):
    """num_clients closed-loop clients for duration_s: (sim, backend, blocks, until, total=None)."""
    from kvsim import closed_loop

    sim, backend, blocks = build_simulation(point, model, None)
    source = None
    if backend == "compute":
        from kvsim.compute import session_token_source

        source = session_token_source(point)
    scripts = closed_loop.scripts(point.sessions, point.seed, sim.config.max_model_len)
    sim.add_sessions(scripts, point.num_clients, source)
    return sim, backend, blocks, point.sessions.duration_s, None


def run_point(point: Point, progress: bool = False, on_build=None) -> PointResult:
    """on_build(sim): called with the built simulation before it runs (a bench wraps its backend)."""
    from kvcache.sizing import kv_bytes_per_block
    from kvsim.progress import SimProgress

    model = model_config(point.engine.model)
    sim, backend, blocks, until, total = (_open_loop if point.sessions is None else _closed_loop)(point, model)
    if on_build is not None:
        on_build(sim)
    with SimProgress(sim, total=total, until=until, label=point.key, enabled=progress):
        result = sim.run(until=until)
    block_bytes = kv_bytes_per_block(model, point.cache.kv_dtype, point.engine.block_size)
    summary = dict(result.summary)
    if point.sessions is not None:
        from kvsim import closed_loop

        summary.update(closed_loop.window_metrics(result.requests, point.sessions))
    steps = result.steps
    summary.update(
        model=model.name, backend=backend, num_blocks=blocks, kv_capacity_bytes=blocks * block_bytes,
        peak_kv_bytes=int(summary["peak_kv_blocks"]) * block_bytes,
        max_seqs_held=int(steps.num_running.max()) if len(steps) else 0,
        mean_batch_size=float(steps.batch_size.mean()) if len(steps) else 0.0,
        cost_model=cost_model_note(backend, sim.backend.cost.source),
    )
    return PointResult(point.key, point.params(), summary, result.requests, steps, result.sessions)
