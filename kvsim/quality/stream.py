"""Streaming perplexity, top-1 agreement and KL against the full cache, on real text.

The text is fed as in serving: a prefill of its first `prefill_tokens` tokens, then one token a
step (teacher-forced), with eviction applied after the prefill and after every step. Every
(policy, budget) point is one sequence of one batch, so all points of a KV dtype run together.
The full cache in the reference KV dtype (fp16) is the reference for agreement and KL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.backends.compute import ComputeBackend
from engine.cost_model import CostModel
from engine.gpus import get_gpu
from engine.loader import LoadedModel
from kvcache.policies import make_policy
from kvcache.sizing import kv_bytes_per_token
from scheduler.config import SchedulerConfig
from scheduler.request import Request
from scheduler.simulation import Simulation


@dataclass
class PointResult:
    """Per predicted position p (text positions prefill .. N-1)."""

    policy: str
    budget: int | None
    kv_dtype: str
    nll: np.ndarray
    top1: np.ndarray
    kl: np.ndarray = field(default_factory=lambda: np.zeros(0))
    agree: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


class _Collector:
    """on_logits hook: log-probs of the targets, top-1, and KL / agreement with the reference."""

    def __init__(self, ids: torch.Tensor, prefill: int, index: dict[int, PointResult], ref: list | None,
                 keep_ref: int | None):
        self.ids, self.prefill, self.index, self.keep_ref = ids, prefill, index, keep_ref
        self.step: dict[int, int] = dict.fromkeys(index, 0)
        self.rows: dict[int, list] = {k: [] for k in index}
        self.ref_logp: list[torch.Tensor] = []
        # without an external reference, compare with our own (it runs first in every step)
        self.ref = ref if ref is not None else self.ref_logp

    def __call__(self, seq_ids: list[int], logits: torch.Tensor) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)  # [n, V]
        steps = [self.step[s] for s in seq_ids]
        for s in seq_ids:
            self.step[s] += 1
        targets = self.ids[[self.prefill + j for j in steps]].to(logp.device)
        nll = -logp.gather(1, targets[:, None])[:, 0]
        top1 = logp.argmax(-1)
        if self.keep_ref in seq_ids:
            self.ref_logp.append(logp[seq_ids.index(self.keep_ref)].half())
        ref = torch.stack([self.ref[j] for j in steps]).float()  # [n, V]
        kl = (ref.exp() * (ref - logp)).sum(-1)
        agree = (top1 == ref.argmax(-1)).float()
        values = torch.stack([nll, top1.float(), kl, agree], dim=1).cpu().tolist()  # one transfer a step
        for seq_id, row in zip(seq_ids, values):
            self.rows[seq_id].append(row)

    def finish(self) -> None:
        for seq_id, point in self.index.items():
            arr = np.array(self.rows[seq_id], dtype=np.float64).reshape(-1, 4)
            point.nll, point.top1, point.kl, point.agree = arr[:, 0], arr[:, 1].astype(int), arr[:, 2], arr[:, 3]


def stream_points(loaded: LoadedModel, ids: list[int], points: list[tuple[str, int | None]], kv_dtype: str, *,
                  prefill_tokens: int = 32, block_size: int = 16, ref_logp: list | None = None,
                  seed: int = 0, track_sink: bool = False) -> tuple[list[PointResult], list | None, float]:
    """Run every (policy, budget) point over the text in one batch with KV dtype `kv_dtype`.

    ref_logp: the reference's per-position log-probs (from an earlier call); when None, the point
    ("full", None) must be present and becomes the reference (returned second). track_sink: also
    return the mean share of all attention (every layer and head) that token 0 receives in the
    reference's decode steps (else NaN)."""
    cfg, n = loaded.config, len(ids)
    if n <= prefill_tokens + 1:
        raise ValueError(f"the text has {n} tokens; it needs more than the prefill ({prefill_tokens}) + 1")
    blocks_per_seq = -(-n // block_size) + 2
    config = SchedulerConfig(num_blocks=blocks_per_seq * len(points), block_size=block_size,
                             max_num_seqs=len(points), max_num_batched_tokens=prefill_tokens * len(points),
                             max_model_len=n + 1, watermark=0.0)
    cost = CostModel(cfg, get_gpu("h100"), kv_bytes_per_token(cfg, kv_dtype))
    backend = ComputeBackend(loaded, config.num_blocks, block_size, cost, kv_dtype=kv_dtype)
    sim = Simulation(config, backend)
    if ref_logp is None:  # the reference goes first: admitted first, it is first in every step
        if ("full", None) not in points:
            raise ValueError("no reference: include the point ('full', None) or pass ref_logp")
        points = [("full", None)] + [p for p in points if p != ("full", None)]
    index = {}
    for i, (policy, budget) in enumerate(points):
        backend.set_policy(i, make_policy(policy, seed=seed) if policy == "random" else make_policy(policy))
        backend.forced[i] = list(ids[prefill_tokens:])
        index[i] = PointResult(policy, budget, kv_dtype, np.zeros(0), np.zeros(0))
        sim.submit(Request(i, 0.0, prefill_tokens, n - prefill_tokens, token_ids=tuple(ids[:prefill_tokens]),
                           budget_tokens=None if policy == "full" else budget))
    if track_sink:  # the reference tracks attention (TOVA's scores) but, with no budget, never evicts
        backend.set_policy(0, make_policy("tova"))
    collector = _Collector(torch.tensor(ids), prefill_tokens, index, ref_logp, 0 if ref_logp is None else None)
    sink_share: list[float] = []
    if track_sink:
        per_step = cfg.num_layers * cfg.num_heads  # each query head's probabilities sum to 1

        def sink_hook(seq_ids, logits, inner=collector):
            if seq_ids and seq_ids[0] == 0 and 0 in backend.scores and inner.step[0] > 0:
                sink_share.append(float(backend.scores[0].arrays["attn_last"][0]) / per_step)
            inner(seq_ids, logits)

        backend.on_logits = sink_hook
    else:
        backend.on_logits = collector
    sim.run()
    collector.finish()
    sink = float(np.mean(sink_share)) if sink_share else float("nan")
    return list(index.values()), collector.ref_logp if ref_logp is None else ref_logp, sink

