"""The compute backend: the real model runs every step on the paged cache.

On a GPU the step duration is measured with CUDA events, from the launch of the step's inputs,
already on the device (ModelRunner.stage: packed and copied by the host), to its sampled tokens on
the host. Host work is not simulated time: scheduling, eviction bookkeeping and input packing are
left out alike, as in an engine that overlaps them with the previous step (vLLM's async scheduling);
the packing sat inside the span until 2026-12-06, and a colder host in the serving loop made
evicting policies' steps 7% slower than the profile's (bench/results/fidelity_h100_run9.json). On the CPU the model runs for its
tokens (correctness, quality) and the duration comes from the cost model, since CPU wall time
says nothing about a GPU. The backend follows the contract in `analytic.py`; the KV manager's
block ids index this backend's `PagedKVStore` directly.
"""

from __future__ import annotations

import torch

import numpy as np

from engine.backends.analytic import AnalyticBackend, StepResult, reads_attention
from engine.backends.slot_scores import SlotScores
from engine.cost_model import CostModel
from engine.generate import SamplingParams, sample
from engine.loader import LoadedModel
from engine.runner import ModelRunner, StepInput
from kvcache.copy_exec import apply_copies
from kvcache.kv_store import PagedKVStore
from kvcache.policies import EvictionPolicy, SlotState, select_evictions
from kvcache.policies.rules import max_pool
from kvcache.swap import HostSwapPool

class ComputeBackend(AnalyticBackend):
    needs_copies = True  # the manager logs copy-on-write, compaction and swap copies for us

    def __init__(self, loaded: LoadedModel, num_blocks: int, block_size: int, cost_model: CostModel, *,
                 kv_dtype: str | torch.dtype | None = None, num_swap_blocks: int = 0,
                 sampling: SamplingParams = SamplingParams(), measure: bool | None = None, sink_tokens: int = 4,
                 policy: EvictionPolicy | None = None):
        """policy: how tokens are chosen for eviction (per sequence with `set_policy`); by default
        StreamingLLM (sink_tokens sinks, then the oldest go)."""
        super().__init__(cost_model, sink_tokens, policy)
        self.scores: dict[int, SlotScores] = {}
        self.forced: dict[int, list[int]] = {}  # seq_id -> its outputs, when teacher-forced
        self.on_logits = None  # callable(seq_ids, logits [n, V] float32): the rows that produced a token
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
        needs = self.needs(scheduled)
        score_out = windows = None
        if reads_attention(needs):
            score_out = self.runner.score_buffers(batch)
            windows = [self._prompt_window(item) for item in scheduled]
        if self.measure:
            # a CUDA graph this step needs is captured first, untimed (a server captures at startup)
            self.runner.prepare_graph(batch, score_out, windows)
        staged = self.runner.stage(batch, score_out, windows)
        if self.measure:
            begin, finish = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
        logits = self.runner.launch(staged)
        tokens = sample(logits, self.sampling, self.generator).tolist()
        if self.measure:
            finish.record()
            finish.synchronize()
            duration = begin.elapsed_time(finish) / 1e3
        else:
            duration = super().execute(scheduled, kv, swap_bytes).duration_s
        if needs:
            self._update_scores(scheduled, kv, score_out)
        produced, rows = {}, []
        for b, (item, tok) in enumerate(zip(scheduled, tokens)):
            if not item.produces_token:
                continue
            seq = item.seq
            forced = self.forced.get(seq.seq_id)
            produced[seq.seq_id] = forced[seq.num_generated] if forced is not None else tok
            rows.append(b)
        if self.on_logits is not None and rows:
            self.on_logits([scheduled[b].seq.seq_id for b in rows], logits[rows])
        return StepResult(duration, produced)

    def _update_scores(self, scheduled, kv, score_out) -> None:
        """Fold this step's attention and new keys into each sequence's per-slot scores."""
        attention = None
        if score_out is not None:  # [B, max_slots]: summed over layers and KV heads
            attention = torch.stack(score_out).sum(dim=(0, 2)).double().cpu().numpy()
        norms_wanted = []  # (scores, fresh logical slots, block table) of the key-norm policies
        for b, item in enumerate(scheduled):
            seq_id = item.seq.seq_id
            policy = self.policy_of(seq_id)
            scores = self.scores.setdefault(seq_id, SlotScores())
            fresh = scores.sync(kv.slot_positions(seq_id))
            n = len(scores.positions)
            if attention is not None and reads_attention(policy.needs):
                row = attention[b, :n]
                if policy.group_reduce == "mean":
                    row = row / self.runner.model.config.group_size
                if self._prompt_window(item):  # SnapKV's observation window, scored once
                    scores.set("prefill", max_pool(row, policy.kernel))
                else:
                    scores.add("attn_sum", row)
                    scores.set("attn_last", row)
            if "key_norm" in policy.needs and len(fresh):
                norms_wanted.append((scores, fresh, kv.block_table(seq_id)))
        if norms_wanted:
            norms = self._key_norms([(table, fresh) for _, fresh, table in norms_wanted])
            for (scores, fresh, _), values in zip(norms_wanted, np.split(norms, np.cumsum([len(f) for _, f, _ in norms_wanted])[:-1])):
                scores.arrays["key_norm"][fresh] = values

    def _prompt_window(self, item) -> int:
        """SnapKV's window on the chunk that completes a prompt, else 0 (every query counts)."""
        policy = self.policy_of(item.seq.seq_id)
        if "prefill" in getattr(policy, "needs", ()) and item.produces_token and item.seq.num_generated == 0:
            return policy.window
        return 0

    def _key_norms(self, slots: list[tuple[list[int], np.ndarray]]) -> np.ndarray:
        """Mean over layers and KV heads of the L2 norm of the keys at these logical slots, for
        every (block table, logical slots) pair, concatenated: one read per layer for all."""
        size = self.store.block_size
        flat = torch.tensor([table[i // size] * size + i % size for table, logical in slots for i in logical.tolist()],
                            device=self.device)
        norms = [self.store.read(layer, flat)[0].norm(dim=-1).mean(dim=-1) for layer in range(self.store.num_layers)]
        return torch.stack(norms).mean(0).double().cpu().numpy()

    def select_evictions(self, seq_id: int, kv, n: int) -> list[int]:
        policy = self.policy_of(seq_id)
        if not policy.needs:  # a positional rule (StreamingLLM, window): the slots' positions are all it reads
            return select_evictions(policy, SlotState(np.asarray(kv.slot_positions(seq_id), dtype=np.int64)), n).tolist()
        scores = self.scores.setdefault(seq_id, SlotScores())
        scores.sync(kv.slot_positions(seq_id))
        return select_evictions(policy, scores.state(), n).tolist()

    def on_moves(self, seq_id: int, moves) -> None:
        if seq_id in self.scores:
            self.scores[seq_id].move(moves)

    def on_free(self, seq_id: int) -> None:
        super().on_free(seq_id)
        self.scores.pop(seq_id, None)
