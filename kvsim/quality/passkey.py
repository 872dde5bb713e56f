"""Passkey retrieval: a five-digit key hidden at a depth of filler text; can the model repeat
it after the cache was evicted down to a budget? (Mohtashami & Jaggi 2023's test.)"""

from __future__ import annotations

import numpy as np

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"


def passkey_prompt(tokenizer, length_tokens: int, depth: float, key: str) -> list[int]:
    """A prompt of about length_tokens tokens with the key's sentence at `depth` (0 = start,
    1 = end) of the filler, cut at a filler sentence boundary."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    fixed = len(tokenizer.encode(INTRO + NEEDLE.format(key=key) + QUESTION))
    per_filler = len(tokenizer.encode(FILLER * 10)) / 10
    repeats = max(int((length_tokens - fixed) / per_filler), 0)
    before = round(repeats * depth)
    text = INTRO + FILLER * before + NEEDLE.format(key=key) + FILLER * (repeats - before) + QUESTION
    return tokenizer.encode(text)


def draw_keys(n: int, rng: np.random.Generator) -> list[str]:
    return [str(k) for k in rng.integers(10000, 100000, n)]


def found(key: str, text: str) -> bool:
    """Exact match: the first five digits the model writes are the key."""
    digits = "".join(ch for ch in text if ch.isdigit())
    return digits[:5] == key
