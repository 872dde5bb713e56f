"""Per-slot scores the eviction policies read, kept in step with the KV manager's slots.

The compute backend adds attention (from the kernels' `score_out`) and key norms after each
step; the KV manager's moves (compaction) and refills (a new token in an evicted slot) are
mirrored here, so slot i's scores always belong to the token slot i holds.
"""

from __future__ import annotations

import numpy as np

from kvcache.policies import SlotState

FIELDS = ("attn_sum", "attn_last", "key_norm", "prefill")


class SlotScores:
    def __init__(self):
        self.positions = np.empty(0, dtype=np.int64)
        self.arrays = {name: np.zeros(0) for name in FIELDS}

    def sync(self, positions: list[int] | np.ndarray) -> np.ndarray:
        """Adopt the manager's slot positions; slots whose token changed start from zero.
        Returns the indices of those new slots."""
        positions = np.asarray(positions, dtype=np.int64)
        n, old = len(positions), len(self.positions)
        if n == old:  # the common step: a token refilled a hole, or nothing changed
            fresh = np.flatnonzero(positions != self.positions)
        else:
            for name, arr in self.arrays.items():
                self.arrays[name] = np.concatenate([arr[:n], np.zeros(max(n - old, 0))])
            fresh = np.flatnonzero(positions != np.concatenate([self.positions[:n], np.full(max(n - old, 0), -2)]))
        if len(fresh):
            for arr in self.arrays.values():
                arr[fresh] = 0.0
        self.positions = positions
        return fresh

    def move(self, moves: list[tuple[int, int]]) -> None:
        """new[dst] = old[src] for every move at once (as the manager applies them)."""
        if not moves:
            return
        src, dst = np.array(moves, dtype=np.int64).T
        for arr in (*self.arrays.values(), self.positions):
            arr[dst] = arr[src].copy()

    def add(self, name: str, values: np.ndarray) -> None:
        """Accumulate per-slot values [<= num_slots] into a field."""
        self.arrays[name][: len(values)] += values

    def set(self, name: str, values: np.ndarray) -> None:
        self.arrays[name][:] = 0.0
        self.arrays[name][: len(values)] = values

    def state(self) -> SlotState:
        return SlotState(self.positions.copy(), **{k: v.copy() for k, v in self.arrays.items()})
