"""The eviction-policy contract, and the one selector every policy shares.

A policy looks at one sequence's cached tokens and either scores them (higher = keep) or marks
them by a positional rule; `select_evictions` then keeps, within the budget, the protected
tokens (attention sinks and the recent window, which count inside the budget) and the best
scored of the rest. Ties go to the newer token (an explicit key, so runs are deterministic).

One slot layout serves every layer and KV head of a sequence (the paged cache has one block
table per sequence), so a score-based policy's scores are combined over layers and KV heads
before selection: that is the price of evicting memory that is really freed. Within a layer the
query heads of a GQA group are combined by `group_reduce` (sum or mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass
class SlotState:
    """Everything a policy may read about one sequence, per logical slot ([num_slots] arrays).

    positions   original token position of each slot
    attn_sum    attention each slot received, accumulated since it was written (H2O)
    attn_last   attention each slot received in the last step (TOVA)
    key_norm    L2 norm of the slot's key, averaged over layers and KV heads (knorm)
    prefill     SnapKV's pooled observation-window score (0 for tokens written later)
    """

    positions: np.ndarray
    attn_sum: np.ndarray | None = None
    attn_last: np.ndarray | None = None
    key_norm: np.ndarray | None = None
    prefill: np.ndarray | None = None

    @property
    def num_slots(self) -> int:
        return len(self.positions)


@dataclass
class EvictionPolicy:
    """Base: keep `sink_tokens` first positions and the `recent_tokens` newest; score the rest.

    Subclasses set `name`, and override `scores` (or leave it, for purely positional rules, in
    which case older tokens go first) and `needs` (which SlotState fields they read).
    """

    name: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    sink_tokens: int = 0
    recent_tokens: int = 0
    group_reduce: str = "sum"  # how a GQA group's query heads combine: sum or mean

    def __post_init__(self):
        if self.sink_tokens < 0 or (self.recent_tokens or 0) < 0:
            raise ValueError(f"{self.name}: sink_tokens and recent_tokens must be >= 0")
        if self.group_reduce not in ("sum", "mean"):
            raise ValueError(f"{self.name}: group_reduce must be 'sum' or 'mean', got {self.group_reduce!r}")

    def protected(self, state: SlotState, keep: int) -> np.ndarray:
        """Bool [num_slots]: sinks, then the recent window, both clipped to fit in `keep`."""
        order = np.argsort(state.positions, kind="stable")  # oldest first
        mask = np.zeros(state.num_slots, dtype=bool)
        sinks = min(self.sink_tokens, keep)
        mask[order[:sinks]] = True
        recent = min(self.recent_window(keep), keep - sinks)
        if recent:
            mask[order[len(order) - recent:]] = True
        return mask

    def recent_window(self, keep: int) -> int:
        """How many of the newest tokens are always kept when `keep` tokens stay."""
        return self.recent_tokens

    def scores(self, state: SlotState) -> np.ndarray:
        """Float [num_slots], higher = more worth keeping. Default: newer is better."""
        return state.positions.astype(np.float64)


def select_evictions(policy: EvictionPolicy, state: SlotState, num_evict: int) -> np.ndarray:
    """Logical slots to evict (sorted): the num_evict lowest-ranked unprotected slots."""
    n = state.num_slots
    if num_evict <= 0:
        return np.empty(0, dtype=np.int64)
    if num_evict > n:
        raise ValueError(f"cannot evict {num_evict} of {n} tokens")
    keep = n - num_evict
    protected = policy.protected(state, keep)
    scores = policy.scores(state)
    # rank: protected last, then by score, then by position (newer kept on ties)
    order = np.lexsort((state.positions, scores, protected))
    return np.sort(order[:num_evict])
