"""The analytic backend: no tensors; a step's duration comes from the cost model.

Backend contract (the compute backend follows it too):
  execute(scheduled, kv) -> StepResult       duration and, where real, the new token ids
  select_evictions(seq_id, kv, n) -> slots   logical slots to evict from a sequence
  on_moves(seq_id, moves), on_free(seq_id)   keep per-slot state in step with the manager
`scheduled` is the scheduler's list of items, each with .seq (.seq_id, .request, .output_ids),
.start, .num_new_tokens, .produces_token, .slots, .seq.is_decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.cost_model import CostModel, StepShape, causal_pairs
from kvcache.policies import EvictionPolicy, make_policy


@dataclass
class StepResult:
    duration_s: float
    token_ids: dict[int, int] | None = None  # seq_id -> new token (compute backend only)


ATTENTION_FIELDS = ("attn_sum", "attn_last", "prefill")  # SlotState fields read from attention probabilities


def reads_attention(needs) -> bool:
    """Whether policies needing these SlotState fields make a step keep attention scores."""
    return not set(needs).isdisjoint(ATTENTION_FIELDS)


def step_shape(scheduled, swap_bytes: int = 0, copy_bytes: int = 0, decode_context=None,
               scored: bool = False) -> StepShape:
    """Aggregate a step for the cost model. decode_context(item) -> tokens a decode reads
    (default: its context; the backends pass the manager's slot count, which eviction bounds);
    scored: the step keeps attention scores for an eviction policy."""
    num_tokens = logits = dctx = pairs = pctx = num_decode = max_ctx = 0
    chunks = []
    for item in scheduled:
        num_tokens += item.num_new_tokens
        logits += item.produces_token
        if item.seq.is_decoding:
            ctx = decode_context(item) if decode_context else item.start + 1
            dctx += ctx
            num_decode += 1
            if ctx > max_ctx:  # noqa: PLR1730 (cheaper than max() on this per-item path)
                max_ctx = ctx
        else:
            pairs += causal_pairs(item.start, item.num_new_tokens)
            pctx += item.start + item.num_new_tokens
            chunks.append((item.start, item.num_new_tokens))
    return StepShape(num_tokens, logits, dctx, pairs, pctx, swap_bytes, copy_bytes, num_decode, max_ctx, tuple(chunks),
                     scored)


class AnalyticBackend:
    def __init__(self, cost_model: CostModel, sink_tokens: int = 4, policy: EvictionPolicy | None = None):
        """policy: the eviction policy of every sequence (per sequence with `set_policy`); here it
        only says whether a step keeps attention scores (which the cost model prices)."""
        self.cost = cost_model
        self.sink_tokens = sink_tokens
        self.policy = policy if policy is not None else make_policy("streaming", sink_tokens=sink_tokens)
        self.policies: dict[int, EvictionPolicy] = {}

    def set_policy(self, seq_id: int, policy: EvictionPolicy) -> None:
        self.policies[seq_id] = policy

    def policy_of(self, seq_id: int) -> EvictionPolicy:
        return self.policies.get(seq_id, self.policy)

    def needs(self, scheduled) -> set[str]:
        """The per-slot state (SlotState fields) the policies of a step's sequences read."""
        if not self.policies:  # every sequence has the default policy (the analytic mode's case)
            return set(self.policy.needs)
        needs: set[str] = set()
        for item in scheduled:
            needs.update(self.policy_of(item.seq.seq_id).needs)
        return needs

    def keeps_scores(self, scheduled) -> bool:
        """Whether the step keeps attention scores (some sequence's policy reads them)."""
        return reads_attention(self.needs(scheduled))

    def shape(self, scheduled, kv, swap_bytes: int = 0) -> StepShape:
        """The step as the cost model sees it: decode rows read the slots the manager holds for them."""
        return step_shape(scheduled, swap_bytes, decode_context=lambda it: kv.num_slots(it.seq.seq_id),
                          scored=self.keeps_scores(scheduled))

    def execute(self, scheduled, kv, swap_bytes: int = 0) -> StepResult:
        return StepResult(self.cost.step_time(self.shape(scheduled, kv, swap_bytes)))

    def select_evictions(self, seq_id: int, kv, n: int) -> list[int]:
        """Which tokens go changes no count, so no scores are kept. The slots just before the
        newest token go: compaction then moves at most that one token, and a block is never
        emptied by a one-token eviction (as with a real policy, which evicts older slots)."""
        num_slots = kv.num_slots(seq_id)
        start = max(min(self.sink_tokens, num_slots - n), num_slots - 1 - n)
        return list(range(start, start + n))

    def on_moves(self, seq_id: int, moves) -> None:
        pass

    def on_free(self, seq_id: int) -> None:
        pass
