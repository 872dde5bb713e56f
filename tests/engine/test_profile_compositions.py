"""The profile's random compositions (engine/profile.py): within the grid and the token budget,
seeded, and the serving family covers the loaded server's steps the broad family rarely draws."""
import numpy as np

from engine.profile import ProfileGrid, random_compositions
from engine.profile_file import MAX_CHUNKS

GRID = ProfileGrid()
TOP_BATCH, TOP_CONTEXT, TOP_CACHED = max(GRID.batches), max(GRID.contexts), max(GRID.prefill_cached)


def draw(seed: int = 0, count: int = 200):
    return random_compositions(GRID, np.random.default_rng(seed), count, 16)


def families(out):
    """(broad, serving) compositions: random_compositions yields a decode-only and a prefill one per
    draw, two draws of each family in turn."""
    broad, serving = [], []
    for i in range(0, len(out), 2):
        (serving if (i // 2 // 2) % 2 else broad).extend(out[i:i + 2])
    return broad, serving


def test_compositions_are_seeded_and_within_the_grid_and_budget():
    out = draw()
    assert out == draw() and out != draw(seed=1)
    assert len(out) == 400
    assert [bool(chunks) for _, chunks in out] == [False, True] * 200
    for contexts, chunks in out:
        assert len(contexts) <= TOP_BATCH and all(16 <= c <= TOP_CONTEXT for c in contexts)
        assert contexts or chunks
        assert len(chunks) <= MAX_CHUNKS
        assert all(n >= 1 and 0 <= cached <= TOP_CACHED for cached, n in chunks)
        if chunks:
            assert len(contexts) + sum(n for _, n in chunks) <= GRID.step_tokens


def test_serving_family_covers_loaded_steps():
    """Serving steps: many decode rows, mixed ones mostly filling the token budget, and a long
    sequence among 128+ rows far more often than the broad family has it (the regime where an H100
    profile fitted on broad steps alone put INT8 mixed steps 5.7% fast)."""
    broad, serving = families(draw())
    assert len(broad) == len(serving) == 200
    assert all(len(c) >= TOP_BATCH // 4 for c, _ in serving)
    assert sum(len(c) < TOP_BATCH // 4 for c, _ in broad) > 100
    mixed = [(c, ch) for c, ch in serving if ch]
    full = sum(len(c) + sum(n for _, n in ch) == GRID.step_tokens for c, ch in mixed)
    assert 0.6 * len(mixed) <= full < len(mixed)  # three in four fill the budget (the rest: a dry queue)
    loaded = lambda comps: sum(len(c) >= 128 and max(c) >= 4096 for c, ch in comps if ch)
    assert loaded(serving) >= 3 * max(1, loaded(broad))


def test_serving_family_covers_an_evicting_policys_batches():
    """A third of the serving steps have every context capped at one budget (most rows at it, as
    StreamingLLM or H2O keep them): many rows, all short, which neither family drew before (an H100
    profile then had no such decode-only row and priced StreamingLLM's decode steps 4.8% fast)."""
    broad, serving = families(draw())
    capped = lambda comps: [c for c, _ in comps if len(c) >= 96 and max(c) <= 1024]
    many_short = capped(serving)
    assert len(many_short) >= 0.2 * len(serving) and len(capped(broad)) <= 0.05 * len(broad)
    at_cap = [sum(x == max(c) for x in c) / len(c) for c in many_short]
    assert np.median(at_cap) > 0.3  # most rows sit at the cap
