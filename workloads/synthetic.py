"""Synthetic load: arrival processes and length distributions that make the readers' request table.

Each process or distribution is a small frozen dataclass with one method,
`sample(n, rng) -> np.ndarray` (lengths: int64 tokens >= 1; arrivals: float64 seconds from 0,
ascending). `synthetic_trace` draws arrivals first, then lengths, from the one generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from workloads.seeding import generator
from workloads.table import Trace, TraceSummary, make_table


class ArrivalProcess(Protocol):
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


class LengthDistribution(Protocol):
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _from_gaps(gaps: np.ndarray) -> np.ndarray:
    """Arrival times from the gaps between requests: the first request arrives at 0."""
    return np.concatenate([[0.0], np.cumsum(gaps)])


@dataclass(frozen=True)
class GammaArrivals:
    """Gamma-distributed gaps with mean 1/rate and coefficient of variation `cv` (>1 burstier than Poisson)."""

    rate_per_s: float
    cv: float

    def __post_init__(self):
        _positive("rate_per_s", self.rate_per_s)
        _positive("cv", self.cv)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        shape = 1.0 / self.cv**2  # gamma CV = 1 / sqrt(shape)
        return _from_gaps(rng.gamma(shape, 1.0 / (self.rate_per_s * shape), max(n - 1, 0)))[:n]


@dataclass(frozen=True)
class PoissonArrivals(GammaArrivals):
    """Independent exponential gaps (gamma with CV 1) at `rate_per_s` requests per second."""

    cv: float = field(default=1.0, init=False)


@dataclass(frozen=True)
class ConstantArrivals:
    """One request every 1/rate seconds."""

    rate_per_s: float

    def __post_init__(self):
        _positive("rate_per_s", self.rate_per_s)

    def sample(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        return np.arange(n, dtype=np.float64) / self.rate_per_s


@dataclass(frozen=True)
class FixedLengths:
    tokens: int

    def __post_init__(self):
        _positive("tokens", self.tokens)

    def sample(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        return np.full(n, self.tokens, dtype=np.int64)


@dataclass(frozen=True)
class UniformLengths:
    """Whole numbers from `low` to `high`, both included."""

    low: int
    high: int

    def __post_init__(self):
        _positive("low", self.low)
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.low, self.high, n, endpoint=True, dtype=np.int64)


@dataclass(frozen=True)
class LognormalLengths:
    """Lognormal with the given mean and coefficient of variation, rounded, within [1, max_tokens]."""

    mean_tokens: float
    cv: float
    max_tokens: int | None = None

    def __post_init__(self):
        _positive("mean_tokens", self.mean_tokens)
        _positive("cv", self.cv)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        sigma2 = np.log1p(self.cv**2)
        draws = rng.lognormal(np.log(self.mean_tokens) - sigma2 / 2, np.sqrt(sigma2), n)
        return np.clip(np.rint(draws), 1, self.max_tokens).astype(np.int64)


@dataclass(frozen=True, eq=False)
class EmpiricalLengths:
    """Draws (with replacement) from observed lengths, e.g. a trace's prompt_tokens column."""

    values: np.ndarray = field(repr=False)

    def __post_init__(self):
        if len(self.values) == 0 or np.min(self.values) < 1:
            raise ValueError("EmpiricalLengths needs at least one value, all >= 1")

    @classmethod
    def of(cls, trace: Trace, column: str) -> EmpiricalLengths:
        return cls(trace.requests[column].to_numpy(dtype=np.int64))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(np.asarray(self.values, dtype=np.int64), n)


@dataclass(frozen=True)
class IndependentLengths:
    """Prompt and output lengths drawn independently (prompt first)."""

    prompt: LengthDistribution
    output: LengthDistribution

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.prompt.sample(n, rng), self.output.sample(n, rng)


@dataclass(frozen=True, eq=False)
class EmpiricalRequests:
    """(prompt, output) pairs drawn together from a trace's rows, keeping their correlation."""

    prompt_tokens: np.ndarray = field(repr=False)
    output_tokens: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, trace: Trace) -> EmpiricalRequests:
        if len(trace) == 0:
            raise ValueError("EmpiricalRequests needs a trace with at least one request")
        requests = trace.requests
        return cls(requests["prompt_tokens"].to_numpy(np.int64), requests["output_tokens"].to_numpy(np.int64))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rows = rng.integers(0, len(self.prompt_tokens), n)
        return self.prompt_tokens[rows], self.output_tokens[rows]


def synthetic_trace(
    n: int,
    arrivals: ArrivalProcess,
    lengths: IndependentLengths | EmpiricalRequests,
    *,
    rng: np.random.Generator | int,
    model: str | None = None,
) -> Trace:
    """`n` requests: arrival times from `arrivals`, then (prompt, output) lengths from `lengths`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = generator(rng)
    arrival_s = arrivals.sample(n, rng)
    prompt_tokens, output_tokens = lengths.sample(n, rng)
    requests = make_table(arrival_s, prompt_tokens, output_tokens, model=[model] * n)
    return Trace(requests, TraceSummary(n, n), None, f"synthetic: {arrivals!r}, {lengths!r}", "synthetic")
