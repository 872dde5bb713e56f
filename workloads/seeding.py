"""One rule for randomness: every draw comes from a `np.random.Generator` the caller gives (or seeds)."""

from __future__ import annotations

import numpy as np


def generator(rng: np.random.Generator | int) -> np.random.Generator:
    """`rng` itself, or a new generator seeded with the int; None is refused (it would not repeat)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"expected a np.random.Generator or an int seed, got {rng!r}")
