"""Offline generation through the paged cache: prefill every prompt, then decode in a batch.

This is the engine's simplest client (`kvsim generate`, the oracle tests). Each sequence gets
the blocks it can ever need up front, in an order that may be shuffled (to prove paging works);
the simulator's scheduler does the real admission and allocation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from engine.errors import ConfigError
from engine.loader import LoadedModel
from engine.runner import ModelRunner, StepInput
from kvcache.kv_store import PagedKVStore


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling: temperature must be >= 0 and 0 < top_p <= 1, got {self}")


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> torch.Tensor:
    """logits [B, V] float32 -> token ids [B]; greedy at temperature 0, else seeded top-p."""
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop = sorted_probs.cumsum(-1) - sorted_probs > params.top_p  # keep the smallest nucleus
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    choice = torch.multinomial(sorted_probs.cpu(), 1, generator=gen).to(logits.device)
    return order.gather(-1, choice).squeeze(-1)


@dataclass
class GenerateResult:
    tokens: list[list[int]]  # new tokens per prompt
    logits: list[torch.Tensor] = field(default_factory=list)  # per step [B, V], if recorded
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        decoded = sum(max(len(t) - 1, 0) for t in self.tokens)
        return decoded / self.decode_s if self.decode_s > 0 else 0.0


def generate(loaded: LoadedModel, prompts: list[list[int]], max_new_tokens: int, *,
             sampling: SamplingParams = SamplingParams(), block_size: int = 16,
             block_order_seed: int | None = None, stop_at_eos: bool = True,
             record_logits: bool = False) -> GenerateResult:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("generate: every prompt needs at least one token")
    if max_new_tokens < 1:
        raise ConfigError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    cfg, model = loaded.config, loaded.model
    longest = max(len(p) for p in prompts) + max_new_tokens
    if longest > model.max_positions:
        raise ConfigError(f"generate: {longest} positions exceed the model's {model.max_positions}")
    device = model.embed_tokens.weight.device
    per_seq = [-(-(len(p) + max_new_tokens) // block_size) for p in prompts]
    ids = list(range(sum(per_seq)))
    if block_order_seed is not None:
        ids = torch.randperm(len(ids), generator=torch.Generator().manual_seed(block_order_seed)).tolist()
    tables, start = [], 0
    for n in per_seq:
        tables.append(ids[start:start + n])
        start += n
    store = PagedKVStore(cfg.num_layers, len(ids), block_size, cfg.num_kv_heads, cfg.head_dim,
                         dtype=model.embed_tokens.weight.dtype, device=device)
    runner = ModelRunner(model, store)

    def slot(b: int, pos: int) -> int:
        return tables[b][pos // block_size] * block_size + pos % block_size

    gen = torch.Generator().manual_seed(sampling.seed)
    result = GenerateResult(tokens=[[] for _ in prompts])
    lengths = [len(p) for p in prompts]
    batch = [StepInput(list(p), 0, [slot(b, i) for i in range(len(p))], tables[b], len(p))
             for b, p in enumerate(prompts)]
    active = list(range(len(prompts)))
    for step in range(max_new_tokens):
        t0 = time.perf_counter()
        logits = runner.run(batch)
        next_ids = sample(logits, sampling, gen).tolist()
        elapsed = time.perf_counter() - t0
        if step == 0:
            result.prefill_s = elapsed
        else:
            result.decode_s += elapsed
        if record_logits:
            full = torch.full((len(prompts), logits.shape[-1]), float("nan"))
            full[active] = logits.cpu()
            result.logits.append(full)
        still = []
        for b, tok in zip(active, next_ids):
            result.tokens[b].append(tok)
            if not (stop_at_eos and tok == cfg.eos_token_id):
                still.append(b)
        active = still
        if not active or step == max_new_tokens - 1:
            break
        batch = []
        for b in active:
            pos = lengths[b]
            lengths[b] += 1
            batch.append(StepInput([result.tokens[b][-1]], pos, [slot(b, pos)], tables[b], pos + 1))
    return result
