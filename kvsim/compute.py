"""Compute mode: the real model in the loop. The model and its prompt text are loaded once per
process; prompts are cut from a tokenized corpus (workloads.materialize_prompts), so prefix ids
of a trace become real shared tokens."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from engine.errors import ConfigError

CPU_STORE_LIMIT_BYTES = 8 * 2**30  # a KV store this large on the host is a sizing mistake, not a plan
CORPUS_CHARS = 400_000  # enough text for distinct prompts; tokenizing more only costs time
DEFAULT_CORPUS = "data/tinyshakespeare_40k.txt"  # shipped with kvsim (the quality text)


def model_dtype(kv_dtype: str):
    """The model's dtype: a float KV cache holds the model's own K/V dtype (the kernels read q and
    the cache alike); a quantized cache dequantizes into fp16 on a GPU (the decode kernel's fast
    INT8 conversion makes fp16), fp32 on the CPU."""
    import torch

    floats = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if kv_dtype in floats:
        return floats[kv_dtype]
    return torch.float16 if torch.cuda.is_available() else torch.float32


@functools.lru_cache(maxsize=2)
def loaded_model(name: str, random_weights: bool = False, kv_dtype: str = "fp32"):
    import torch

    from engine.loader import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_model(name, device=device, dtype=model_dtype(kv_dtype), random_weights=random_weights)


@functools.lru_cache(maxsize=2)
def corpus_ids(engine, kv_dtype: str) -> np.ndarray:
    """Token ids of the corpus text (random ids for a random-weight model without tokenizer)."""
    corpus = engine.corpus
    loaded = loaded_model(engine.model, engine.random_weights, kv_dtype)
    if loaded.tokenizer is None:
        return np.random.default_rng(0).integers(0, loaded.config.vocab_size, 200_000)
    if corpus is None:
        from importlib import resources

        text = resources.files("kvsim").joinpath(DEFAULT_CORPUS).read_text()
    else:
        try:
            with open(corpus, encoding="utf-8", errors="replace") as f:
                text = f.read(CORPUS_CHARS)
        except OSError as e:
            raise ConfigError(f"engine.corpus (--corpus): {corpus}: {e.strerror}") from None
    return np.asarray(loaded.tokenizer.encode(text[:CORPUS_CHARS]), dtype=np.int64)


def compute_simulation(point, model, fields: dict, budget: int | None):
    from engine.backends.compute import ComputeBackend
    from engine.cost_model import cost_model_for
    from engine.gpus import get_gpu
    from kvcache.policies import make_policy
    from kvcache.sizing import kv_bytes_per_block
    from scheduler.config import SchedulerConfig
    from scheduler.simulation import Simulation

    engine, cache = point.engine, point.cache
    config = SchedulerConfig(**fields)
    loaded = loaded_model(engine.model, engine.random_weights, cache.kv_dtype)
    store_bytes = config.num_blocks * kv_bytes_per_block(model, cache.kv_dtype, config.block_size)
    if loaded.model.embed_tokens.weight.device.type == "cpu" and store_bytes > CPU_STORE_LIMIT_BYTES:
        raise ConfigError(f"compute mode on the CPU: a KV store of {config.num_blocks} blocks is "
                          f"{store_bytes / 2**30:.1f} GiB; size it with --kv-blocks or --kv-mem-gib")
    cost = cost_model_for(model, get_gpu(engine.gpu), cache.kv_dtype)  # step times off the GPU
    policy = make_policy(cache.policy) if budget is not None else None
    backend = ComputeBackend(loaded, config.num_blocks, config.block_size, cost, kv_dtype=cache.kv_dtype,
                             num_swap_blocks=config.num_swap_blocks, sink_tokens=engine.sink_tokens, policy=policy)
    return Simulation(config, backend, budget_tokens=budget,
                      block_bytes=kv_bytes_per_block(model, cache.kv_dtype, config.block_size))


def with_prompt_tokens(trace, requests: list, point) -> list:
    """The requests with prompt token ids cut from the corpus (seeded by the point's seed)."""
    from workloads import materialize_prompts

    ids = materialize_prompts(trace, corpus_ids(point.engine, point.cache.kv_dtype), point.seed)
    return [dataclasses.replace(r, token_ids=tuple(int(t) for t in p)) for r, p in zip(requests, ids)]


def session_token_source(point):
    """token_source(session, start, length) for closed-loop clients: corpus stretches seeded by
    (seed, session, start), so a turn's text does not depend on how many clients run."""
    corpus = corpus_ids(point.engine, point.cache.kv_dtype)

    def source(session: int, start: int, length: int) -> tuple[int, ...]:
        offset = int(np.random.default_rng([point.seed, session, start]).integers(len(corpus)))
        return tuple(int(t) for t in corpus[(offset + np.arange(length)) % len(corpus)])

    return source
