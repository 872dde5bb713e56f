"""`kvsim quality`: what each eviction policy and KV dtype costs, on a real model and real text.

For every policy x budget x KV dtype: streaming perplexity (positions after the cache first
exceeds the budget), top-1 agreement and KL with the fp16 full cache, and passkey retrieval by
depth and length; plus how much attention token 0 receives (is it a sink in this model?).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.backends.compute import ComputeBackend
from engine.cost_model import CostModel
from engine.gpus import get_gpu
from engine.loader import load_model
from kvcache.policies import make_policy
from kvcache.sizing import kv_bytes_per_token
from kvsim.quality.passkey import draw_keys, found, passkey_prompt
from kvsim.quality.stream import stream_points
from scheduler.config import SchedulerConfig
from scheduler.request import Request
from scheduler.simulation import Simulation

REFERENCE_DTYPE = "fp16"


@dataclass(frozen=True)
class QualityConfig:
    model: str = field(default="smollm2-135m", metadata={"help": "model name or path (real weights)"})
    text: str | None = field(default=None, metadata={"help": "text file (default: shipped Tiny Shakespeare)"})
    policies: tuple[str, ...] = field(default=("full", "window", "streaming", "h2o", "tova", "snapkv", "random", "knorm"),
                                      metadata={"help": "eviction policies (kvcache.policies)"})
    budgets: tuple[int, ...] = field(default=(64, 128, 256, 512, 1024), metadata={"help": "KV budgets, tokens per sequence"})
    kv_dtypes: tuple[str, ...] = field(default=("fp16", "int8"), metadata={"help": "KV dtypes (fp16 is the reference)"})
    max_tokens: int = field(default=4096, metadata={"help": "tokens of text fed"})
    prefill_tokens: int = field(default=32, metadata={"help": "the first chunk, prefilled at once"})
    block_size: int = field(default=16, metadata={"help": "tokens per KV block"})
    passkey_lengths: tuple[int, ...] = field(default=(512, 1024, 2048), metadata={"help": "passkey prompt lengths (tokens); empty = skip"})
    passkey_depths: tuple[float, ...] = field(default=(0.0, 0.25, 0.5, 0.75, 1.0), metadata={"help": "where the key sits (0 = start, 1 = end)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if present), cpu, cuda"})
    dtype: str = field(default="auto", metadata={"help": "model weights: auto (fp32 on CPU, fp16 on GPU), fp32, fp16, bf16"})
    passkey_budgets: tuple[int, ...] | None = field(default=None, metadata={"help": "budgets for passkey (default: all)"})


    def __post_init__(self):
        from engine.errors import ConfigError
        from kvcache.dtypes import get_kv_dtype
        from kvcache.policies import POLICY_NAMES

        unknown = [p for p in self.policies if p not in POLICY_NAMES]
        if unknown:
            raise ConfigError(f"--policies: unknown {', '.join(unknown)}; known: {', '.join(POLICY_NAMES)}")
        for name in self.kv_dtypes:
            get_kv_dtype(name)  # raises with the valid names
        if REFERENCE_DTYPE not in self.kv_dtypes:
            raise ConfigError(f"--kv-dtypes must include {REFERENCE_DTYPE} (the reference for agreement and KL)")
        if min(self.budgets, default=1) < 1 or self.max_tokens < 2 or self.prefill_tokens < 1:
            raise ConfigError("--budgets, --prefill-tokens must be >= 1 and --max-tokens >= 2")
        if any(not 0 <= d <= 1 for d in self.passkey_depths):
            raise ConfigError(f"--passkey-depths must lie in [0, 1], got {self.passkey_depths}")


def default_text() -> str:
    return resources.files("kvsim").joinpath("data/tinyshakespeare_40k.txt").read_text()


def _points(cfg: QualityConfig) -> list[tuple[str, int | None]]:
    return [("full", None)] + [(p, b) for p in cfg.policies if p != "full" for b in cfg.budgets]


def _device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def perplexity_table(loaded, ids: list[int], cfg: QualityConfig, seed: int = 0) -> tuple[pd.DataFrame, float]:
    points, rows, ref, sink = _points(cfg), [], None, float("nan")
    positions = np.arange(cfg.prefill_tokens, len(ids))  # the text position each prediction is for
    full_nll = None
    for dtype in sorted(cfg.kv_dtypes, key=lambda d: d != REFERENCE_DTYPE):
        results, ref, mass = stream_points(loaded, ids, points, dtype, prefill_tokens=cfg.prefill_tokens,
                                           block_size=cfg.block_size, ref_logp=ref, seed=seed,
                                           track_sink=dtype == REFERENCE_DTYPE)
        if dtype == REFERENCE_DTYPE:
            sink = mass
        for r in results:
            if r.policy == "full" and dtype == REFERENCE_DTYPE:
                full_nll = r.nll
            counted = positions > (r.budget or 0)  # after the cache first exceeds the budget
            rows.append({"policy": r.policy, "budget": r.budget if r.budget is not None else 0, "kv_dtype": dtype,
                         "ppl": float(np.exp(r.nll[counted].mean())),
                         "ppl_full_same_positions": float(np.exp(full_nll[counted].mean())),
                         "top1_agreement": float(np.nanmean(r.agree[counted])),
                         "kl": float(np.nanmean(r.kl[counted])), "positions": int(counted.sum())})
    return pd.DataFrame(rows), sink


def passkey_table(loaded, cfg: QualityConfig, seed: int = 0) -> pd.DataFrame:
    """Every (point, length, depth) as one request of one batch, fp16 KV, greedy 8 tokens."""
    rng = np.random.default_rng(seed)
    points = [(p, b) for p, b in _points(cfg) if b is None or cfg.passkey_budgets is None or b in cfg.passkey_budgets]
    cases = [(p, b, n, d) for p, b in points for n in cfg.passkey_lengths for d in cfg.passkey_depths]
    keys = draw_keys(len(cases), rng)
    prompts = [passkey_prompt(loaded.tokenizer, n, d, k) for (_, _, n, d), k in zip(cases, keys)]
    size = cfg.block_size
    blocks = sum(-(-(len(p) + 8) // size) for p in prompts) + len(prompts)
    config = SchedulerConfig(num_blocks=blocks, block_size=size, max_num_seqs=len(prompts),
                             max_model_len=max(len(p) for p in prompts) + 8, watermark=0.0)
    cost = CostModel(loaded.config, get_gpu("h100"), kv_bytes_per_token(loaded.config, REFERENCE_DTYPE))
    backend = ComputeBackend(loaded, blocks, size, cost, kv_dtype=REFERENCE_DTYPE)
    sim = Simulation(config, backend)
    for i, ((policy, budget, _, _), ids) in enumerate(zip(cases, prompts)):
        backend.set_policy(i, make_policy(policy, seed=seed) if policy == "random" else make_policy(policy))
        sim.submit(Request(i, 0.0, len(ids), 8, token_ids=tuple(ids), budget_tokens=budget))
    sim.run()
    rows = []
    for seq, (policy, budget, n, d), key, ids in zip(sorted(sim.seqs, key=lambda s: s.seq_id), cases, keys, prompts):
        answer = loaded.tokenizer.decode(seq.output_ids)
        rows.append({"policy": policy, "budget": budget or 0, "length": n, "prompt_tokens": len(ids), "depth": d,
                     "key": key, "answer": answer.strip(), "correct": found(key, answer)})
    return pd.DataFrame(rows)


def run_quality(cfg: QualityConfig, log=print, seed: int = 0) -> dict:
    """Both tables and the summary; the caller writes them (see kvsim.quality.report)."""
    start = time.perf_counter()
    device = _device(cfg.device)
    dtype = {"auto": torch.float16 if device.type == "cuda" else torch.float32, "fp32": torch.float32,
             "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.dtype]
    loaded = load_model(cfg.model, device=device, dtype=dtype)
    if loaded.tokenizer is None:
        raise ValueError(f"quality needs a model with real weights and a tokenizer, not {cfg.model!r}")
    text = Path(cfg.text).read_text() if cfg.text else default_text()
    ids = loaded.tokenizer.encode(text)[: cfg.max_tokens]
    log(f"quality: {len(ids)} tokens, {len(_points(cfg))} points x {len(cfg.kv_dtypes)} KV dtypes on {loaded.config.name}")
    ppl, sink = perplexity_table(loaded, ids, cfg, seed)
    passkey = passkey_table(loaded, cfg, seed) if cfg.passkey_lengths and cfg.passkey_depths else pd.DataFrame()
    summary = {"model": loaded.config.name, "tokens": len(ids), "token0_attention_share": sink,
               "wall_time_s": time.perf_counter() - start, "device": str(device),
               "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "weights_dtype": str(dtype).removeprefix("torch."),
               "seed": seed, "config": dataclasses.asdict(cfg)}
    return {"quality": ppl, "passkey": passkey, "summary": summary}
