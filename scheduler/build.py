"""Assemble a simulation from names: a model shape, a GPU, a KV dtype; and turn a workload's
request table into Requests."""

from __future__ import annotations

import numpy as np

from engine.backends.analytic import AnalyticBackend
from engine.config import PRESETS, ModelConfig
from engine.cost_model import cost_model_for
from engine.errors import ConfigError
from engine.gpus import GPU, get_gpu
from kvcache.policies import make_policy
from kvcache.sizing import kv_bytes_per_block
from scheduler.config import SchedulerConfig
from scheduler.request import Request
from scheduler.simulation import Simulation

ACTIVATION_RESERVE = 0.05  # of GPU memory, kept for activations and the allocator's slack


def kv_blocks_for_gpu(model: ModelConfig, gpu: GPU, kv_dtype: str, block_size: int,
                      gpu_mem_util: float = 0.9, weight_bytes_per_param: float = 2.0) -> int:
    """Blocks that fit in gpu_mem_util of the GPU after the weights (as vLLM sizes its cache)."""
    free = gpu.memory_bytes * (gpu_mem_util - ACTIVATION_RESERVE) - model.num_params * weight_bytes_per_param
    blocks = int(free // kv_bytes_per_block(model, kv_dtype, block_size))
    if blocks < 1:
        raise ConfigError(f"{model.name} weights ({model.num_params * weight_bytes_per_param / 2**30:.0f} GiB) "
                          f"leave no room for a KV cache on {gpu.name} at gpu_mem_util {gpu_mem_util}")
    return blocks


def analytic_simulation(model: str | ModelConfig = "llama-3.1-8b", gpu: str | GPU = "h100",
                        kv_dtype: str = "fp16", *, gpu_mem_util: float = 0.9, budget_tokens: int | None = None,
                        sink_tokens: int = 4, evict_every: int = 1, policy: str | None = None,
                        **scheduler_fields) -> Simulation:
    """policy: the eviction policy's name (kvcache.policies); the analytic mode chooses no tokens, but
    a policy that reads attention scores makes every step keep them, which the cost model prices."""
    if isinstance(model, str) and model in PRESETS:
        model = PRESETS[model]
    elif isinstance(model, str):  # a checkpoint's config; engine.loader imports torch, so only here
        from engine.loader import load_config

        model = load_config(model)
    cfg = model
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    block_size = scheduler_fields.get("block_size", SchedulerConfig.block_size)
    scheduler_fields.setdefault("num_blocks", kv_blocks_for_gpu(cfg, gpu, kv_dtype, block_size, gpu_mem_util))
    scheduler_fields.setdefault("max_model_len", cfg.max_position_embeddings)
    config = SchedulerConfig(**scheduler_fields)
    cost = cost_model_for(cfg, gpu, kv_dtype)  # calibrated where a profile exists, else the roofline
    backend = AnalyticBackend(cost, sink_tokens, make_policy(policy) if policy is not None else None)
    return Simulation(config, backend, budget_tokens=budget_tokens,
                      evict_every=evict_every, block_bytes=kv_bytes_per_block(cfg, kv_dtype, block_size))


def requests_from_table(table) -> list[Request]:
    """workloads' request table (pandas) -> Requests, in arrival order."""
    ids = table["request_id"].to_numpy() if "request_id" in table else np.arange(len(table))
    arrival = table["arrival_s"].to_numpy(dtype=float)
    prompt = table["prompt_tokens"].to_numpy(dtype=np.int64)
    output = table["output_tokens"].to_numpy(dtype=np.int64)
    prefix = table["prefix_block_ids"].tolist() if "prefix_block_ids" in table else [None] * len(table)
    return [Request(int(i), float(a), int(p), int(o),
                    prefix_block_ids=tuple(int(x) for x in b) if b is not None and len(b) else None)
            for i, a, p, o, b in zip(ids, arrival, prompt, output, prefix)]
