"""The compute backend: the real model runs every step on the paged cache.

On a GPU the step duration is measured with CUDA events; on the CPU the model runs for its
tokens (correctness, quality) and the duration comes from the cost model, since CPU wall time
says nothing about a GPU. The backend follows the contract in `analytic.py`; the KV manager's
block ids index this backend's `PagedKVStore` directly.
"""

from __future__ import annotations

import torch

from engine.backends.analytic import AnalyticBackend, StepResult
from engine.cost_model import CostModel
from engine.generate import SamplingParams, sample
from engine.loader import LoadedModel
from engine.runner import ModelRunner, StepInput
from kvcache.copy_exec import apply_copies
from kvcache.kv_store import PagedKVStore
from kvcache.swap import HostSwapPool


class ComputeBackend(AnalyticBackend):
    needs_copies = True  # the manager logs copy-on-write, compaction and swap copies for us

    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int, cost_model: CostModel, *,
                 kv_dtype: str | torch.dtype | None = None, num_swap_blocks: int = 0,
                 sampling: SamplingParams = SamplingParams(), measure: bool | None = None, sink_tokens: int = 4):
        super().__init__(cost_model, sink_tokens)
        cfg, model = loaded.config, loaded.model
        self.device = model.embed_tokens.weight.device
        self.store = PagedKVStore(cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim,
                                  dtype=kv_dtype or model.embed_tokens.weight.dtype, device=self.device)
        self.swap_pool = HostSwapPool(self.store, num_swap_blocks) if num_swap_blocks else None
        self.runner = ModelRunner(model, self.store)
        self.sampling = sampling
        self.generator = torch.Generator().manual_seed(sampling.seed)
        self.measure = self.device.type == "cuda" if measure is None else measure

    @staticmethod
    def known_tokens(seq, start: int, end: int) -> list[int]:
        """Token ids [start, end) of a sequence's prompt followed by its outputs."""
        prompt = seq.request.token_ids
        if prompt is None:
            raise ValueError(f"request {seq.seq_id}: the compute backend needs prompt token ids "
                             "(materialize the workload first)")
        n = len(prompt)
        return [prompt[j] if j < n else seq.output_ids[j - n] for j in range(start, end)]

    def execute(self, scheduled, kv, swap_bytes: int = 0) -> StepResult:
        apply_copies(kv.take_pending_copies(), self.store, self.swap_pool)
        batch = []
        for item in scheduled:
            seq_id, start, end = item.seq.seq_id, item.start, item.start + item.num_new_tokens
            slots = item.slots if item.slots is not None else kv.slot_mapping(seq_id, start, end)
            # a prefill chunk reads the slots up to its end; a decode reads every held slot
            seq_len = kv.num_slots(seq_id) if item.seq.is_decoding else end
            batch.append(StepInput(self.known_tokens(item.seq, start, end), start, list(slots),
                                   kv.block_table(seq_id), seq_len))
        if self.measure:
            begin, finish = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        logits = self.runner.run(batch)
        tokens = sample(logits, self.sampling, self.generator).tolist()
        if self.measure:
            finish.record()
            finish.synchronize()
            duration = begin.elapsed_time(finish) / 1e3
        else:
            duration = super().execute(scheduled, kv, swap_bytes).duration_s
        produced = {item.seq.seq_id: tok for item, tok in zip(scheduled, tokens) if item.produces_token}
        return StepResult(duration, produced)
