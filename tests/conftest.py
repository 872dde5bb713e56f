"""Shared fixtures: the real model (pulled once per machine into the kvsim cache) and ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present (tests read ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M with real weights, float32, on the CPU."""
    from engine.loader import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def shakespeare_ids(smollm2) -> list[int]:
    text = shared_path("text", "tinyshakespeare.txt").read_text()[:20000]
    return smollm2.tokenizer.encode(text)
