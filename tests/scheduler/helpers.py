"""Small simulations with durations the tests control."""

from __future__ import annotations

from engine.backends.analytic import AnalyticBackend, StepResult
from scheduler.config import SchedulerConfig
from scheduler.request import Request
from scheduler.simulation import Simulation


class FixedBackend(AnalyticBackend):
    """Every step takes `base_s + per_token_s * tokens`: durations a test can reason about."""

    def __init__(self, base_s: float = 1.0, per_token_s: float = 0.0):
        super().__init__(cost_model=None)
        self.base_s, self.per_token_s = base_s, per_token_s

    def execute(self, scheduled, kv, swap_bytes: int = 0) -> StepResult:
        return StepResult(self.base_s + self.per_token_s * sum(s.num_new_tokens for s in scheduled))


def sim_with(requests: list[Request], backend=None, budget_tokens=None, **config) -> Simulation:
    sim = Simulation(SchedulerConfig(**config), backend or FixedBackend(), budget_tokens=budget_tokens,
                     log_events=True)
    sim.add_trace(requests)
    return sim


def req(i: int, t: float, prompt: int, output: int, **kw) -> Request:
    return Request(i, t, prompt, output, **kw)
