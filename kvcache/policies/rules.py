"""The policies: positional rules (full, window, streaming) and scored ones (h2o, tova, snapkv,
random, knorm). Each is a small dataclass; `kvcache.policies.POLICIES` registers them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvcache.policies.base import EvictionPolicy, SlotState


@dataclass
class Full(EvictionPolicy):
    """No eviction: the budget is ignored (the simulator runs it without one)."""

    name = "full"


@dataclass
class Window(EvictionPolicy):
    """The newest tokens only (a sliding window; no sinks)."""

    name = "window"


@dataclass
class Streaming(EvictionPolicy):
    """StreamingLLM (Xiao et al. 2023): the first `sink_tokens` tokens + the newest."""

    name = "streaming"
    sink_tokens: int = 4


@dataclass
class H2O(EvictionPolicy):
    """Heavy-Hitter Oracle (Zhang et al. 2023): accumulated attention + a recent window.
    With recent_tokens=None the recent window is half the budget (the paper's default)."""

    name = "h2o"
    needs = ("attn_sum",)
    recent_tokens: int | None = None

    def recent_window(self, keep: int) -> int:
        return keep // 2 if self.recent_tokens is None else self.recent_tokens

    def scores(self, state: SlotState) -> np.ndarray:
        return state.attn_sum


@dataclass
class TOVA(EvictionPolicy):
    """TOVA (Oren et al. 2024): keep what the newest query attends to most."""

    name = "tova"
    needs = ("attn_last",)

    def scores(self, state: SlotState) -> np.ndarray:
        return state.attn_last


@dataclass
class SnapKV(EvictionPolicy):
    """SnapKV (Li et al. 2024): prompt tokens scored once by the attention of the prompt's last
    `window` queries, max-pooled over `kernel` neighbours; tokens written later are scored by
    the attention they accumulate (as H2O), and the recent window is always kept."""

    name = "snapkv"
    needs = ("prefill", "attn_sum")
    window: int = 32
    kernel: int = 7
    recent_tokens: int = 32  # the observation window stays (at most half the budget)

    def recent_window(self, keep: int) -> int:
        return min(self.recent_tokens, keep // 2)

    def scores(self, state: SlotState) -> np.ndarray:
        return state.prefill + state.attn_sum


@dataclass
class Random(EvictionPolicy):
    """Seeded random scores: the floor any real policy should beat."""

    name = "random"
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        self._rng = np.random.default_rng(self.seed)

    def scores(self, state: SlotState) -> np.ndarray:
        return self._rng.random(state.num_slots)


@dataclass
class KNorm(EvictionPolicy):
    """Key-norm (Devoto et al. 2024): keys with a small L2 norm draw attention; keep them."""

    name = "knorm"
    needs = ("key_norm",)

    def scores(self, state: SlotState) -> np.ndarray:
        return -state.key_norm


def max_pool(x: np.ndarray, kernel: int) -> np.ndarray:
    """Max over a centred window of `kernel` neighbours (SnapKV's pooling), same length."""
    if kernel <= 1 or len(x) == 0:
        return x
    half = kernel // 2
    padded = np.pad(x, half, mode="edge")
    return np.lib.stride_tricks.sliding_window_view(padded, kernel).max(axis=1)[: len(x)]
