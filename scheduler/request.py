"""Requests (what a workload submits) and sequences (the scheduler's mutable state of one).

A sequence's tokens are its prompt followed by what it has generated so far ("known" tokens).
Each engine step feeds a sequence a chunk of known tokens whose K/V are not cached yet; when a
step feeds its last known token, the model produces one new token. One rule covers prefill
(chunked or not), decode (a chunk of one) and recompute after preemption (everything again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True)
class Request:
    request_id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int  # tokens to generate (a trace's output length; EOS is ignored)
    session_id: int | None = None
    turn: int = 0
    prefix_block_ids: tuple[int, ...] | None = None  # a trace's prefix identity per id block
    token_ids: tuple[int, ...] | None = None  # the prompt, where the backend needs real tokens
    priority: int = 0  # lower runs first when the scheduler uses priorities
    budget_tokens: int | None = None  # this request's KV eviction budget (None: the simulation's)


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED = "finished"
    REJECTED = "rejected"


@dataclass(eq=False)
class Sequence:
    request: Request
    status: Status = Status.WAITING
    num_computed: int = 0  # known tokens whose K/V are in the cache (incl. prefix hits)
    num_generated: int = 0
    output_ids: list[int] = field(default_factory=list)  # compute backend only
    token_times_s: list[float] = field(default_factory=list)  # when each output token appeared
    first_scheduled_s: float | None = None
    finish_s: float | None = None
    preemptions: int = 0
    evicted_tokens: int = 0
    prefix_hit_tokens: int = 0
    reject_reason: str = ""
    admit_order: int = 0  # set at each admission; the latest admitted is preempted first

    @property
    def seq_id(self) -> int:
        return self.request.request_id

    @property
    def num_known(self) -> int:
        return self.request.prompt_tokens + self.num_generated

    @property
    def num_uncomputed(self) -> int:
        return self.num_known - self.num_computed

    @property
    def is_decoding(self) -> bool:
        return self.num_generated > 0 and self.num_uncomputed == 1

    @property
    def remaining_outputs(self) -> int:
        return self.request.output_tokens - self.num_generated

    def sort_key(self) -> tuple:
        """Queue order: priority, then arrival, then id (an explicit, total tie-break)."""
        r = self.request
        return (r.priority, r.arrival_s, r.request_id)
