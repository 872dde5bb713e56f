"""The continuous-batching scheduler: who runs in the next step, and how many tokens each.

Plain Python, no torch. One step is built in this order (Sarathi-style, decode first):
  1. running sequences that decode take one token each; when a sequence cannot get a slot, the
     most recently admitted running sequence is preempted (recompute: its blocks are freed and
     it waits again; swap: its blocks go to the host pool) until it can, or it is the victim;
  2. running sequences in the middle of a chunked prefill take their next chunk;
  3. swapped-out sequences come back while blocks allow, and decode in the same step; no new
     sequence is admitted while any is still swapped out;
  4. waiting sequences are admitted in queue order (priority, arrival, id) while the token
     budget, max_num_seqs and free blocks (above the watermark) allow. The head of the queue
     blocks the rest (FCFS, no overtaking), so nothing starves.
A request that can never run (too long for the model, more blocks than the cache has) is
rejected when it is added, with its reason.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from kvcache.manager import KVCacheManager
from scheduler.config import SchedulerConfig
from scheduler.request import Request, Sequence, Status


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int  # known tokens fed this step
    start: int  # index of the first of them
    produces_token: bool  # feeds its last known token, so a new token comes out
    slots: list[int] | None = None  # flat slots of decode tokens (prefill slots come from the manager)

    @property
    def context_tokens(self) -> int:
        """Tokens attention reads after this step's writes (before eviction)."""
        return self.start + self.num_new_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    swapped_in: list[Sequence] = field(default_factory=list)
    admission_blocked: bool = False  # the waiting queue's head could not be admitted

    @property
    def num_prefill_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled if not s.seq.is_decoding)

    @property
    def num_decode_tokens(self) -> int:
        return sum(1 for s in self.scheduled if s.seq.is_decoding)

    @property
    def is_pure_decode(self) -> bool:
        return bool(self.scheduled) and all(s.seq.is_decoding for s in self.scheduled)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, budget_tokens: int | None = None):
        """budget_tokens: token-eviction budget per sequence (None = keep every token)."""
        self.config, self.kv, self.budget_tokens = config, kv, budget_tokens
        self.waiting: list[tuple[tuple, Sequence]] = []  # heap by sort key
        self.running: list[Sequence] = []  # admission order
        self.swapped: list[Sequence] = []
        self.rejected: list[Sequence] = []
        self._admissions = 0

    # ---- intake -------------------------------------------------------------------------------
    def add(self, request: Request) -> Sequence:
        seq = Sequence(request)
        reason = self._never_fits(request)
        if reason:
            seq.status, seq.reject_reason = Status.REJECTED, reason
            self.rejected.append(seq)
        else:
            heapq.heappush(self.waiting, (self._key(seq), seq))
        return seq

    def _key(self, seq: Sequence) -> tuple:
        key = seq.sort_key()
        return key if self.config.use_priorities else key[1:]

    def _never_fits(self, r: Request) -> str:
        c = self.config
        if r.prompt_tokens < 1 or r.output_tokens < 1:
            return f"needs >= 1 prompt and output token (got {r.prompt_tokens}, {r.output_tokens})"
        if r.prompt_tokens + r.output_tokens > c.max_model_len:
            return (f"prompt + output = {r.prompt_tokens + r.output_tokens} tokens exceeds "
                    f"max_model_len {c.max_model_len}")
        held = r.prompt_tokens + r.output_tokens - 1
        budget = self.budget_of(r)
        if budget is not None:
            if budget < 1:
                return f"eviction budget must be >= 1 token, got {budget}"
            held = max(r.prompt_tokens, min(held, budget + c.block_size))
        blocks = -(-held // c.block_size)
        usable = c.num_blocks - self.kv.watermark_blocks
        if blocks > usable:
            return f"needs {blocks} KV blocks, the cache has {usable} usable of {c.num_blocks}"
        return ""

    def budget_of(self, request: Request) -> int | None:
        """The request's token-eviction budget (its own, else the scheduler's; None = no eviction)."""
        return request.budget_tokens if request.budget_tokens is not None else self.budget_tokens

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # ---- one step -----------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled_ids: set[int] = set()
        for seq in list(self.running):  # 1. decodes
            if seq.status is not Status.RUNNING or not seq.is_decoding or budget < 1:
                continue
            if self._make_room(seq, out, scheduled_ids):
                out.scheduled.append(ScheduledSeq(seq, 1, seq.num_computed, True, self.kv.append_slots(seq.seq_id, 1)))
                scheduled_ids.add(seq.seq_id)
                budget -= 1
        for seq in self.running:  # 2. prefill chunks of admitted sequences
            if budget < 1:
                break
            if seq.seq_id in scheduled_ids or seq.num_uncomputed == 0 or seq.is_decoding:
                continue
            chunk = self._chunk(seq, budget)
            if chunk:
                out.scheduled.append(self._prefill(seq, chunk))
                scheduled_ids.add(seq.seq_id)
                budget -= chunk
        while self.swapped and len(self.running) < self.config.max_num_seqs:  # 3. swap-ins
            seq = self.swapped[0]
            if not self.kv.can_swap_in(seq.seq_id):
                break
            self.kv.swap_in(seq.seq_id)
            self.swapped.pop(0)
            self._run(seq)
            out.swapped_in.append(seq)
            if budget >= 1 and self.kv.can_append(seq.seq_id, 1):  # it decodes in this very step
                out.scheduled.append(ScheduledSeq(seq, 1, seq.num_computed, True, self.kv.append_slots(seq.seq_id, 1)))
                budget -= 1
        if not self.swapped:
            self._admit(out, budget)
        elif self.waiting:
            out.admission_blocked = True
        return out

    def _chunk(self, seq: Sequence, budget: int) -> int:
        need = seq.num_uncomputed
        if self.config.enable_chunked_prefill:
            return min(need, budget)
        return need if need <= budget else 0

    def _prefill(self, seq: Sequence, chunk: int) -> ScheduledSeq:
        return ScheduledSeq(seq, chunk, seq.num_computed, seq.num_computed + chunk == seq.num_known)

    def _admit(self, out: SchedulerOutput, budget: int) -> None:
        kv = self.kv
        while self.waiting:
            seq = self.waiting[0][1]
            r = seq.request
            tokens = r.token_ids if r.token_ids is not None and seq.num_generated == 0 else None
            ids = r.prefix_block_ids if tokens is None and seq.num_generated == 0 else None
            whole_prompt_fits = self.config.enable_chunked_prefill or seq.num_known <= budget
            if (len(self.running) >= self.config.max_num_seqs or budget < 1 or not whole_prompt_fits
                    or not kv.can_allocate(seq.num_known, tokens, ids)):
                out.admission_blocked = True
                return
            heapq.heappop(self.waiting)
            cached = kv.allocate(seq.seq_id, seq.num_known, tokens, ids)
            seq.num_computed = cached
            seq.prefix_hit_tokens += cached
            self._run(seq)
            chunk = self._chunk(seq, budget)
            out.scheduled.append(self._prefill(seq, chunk))
            budget -= chunk

    def _run(self, seq: Sequence) -> None:
        seq.status = Status.RUNNING
        self._admissions += 1
        seq.admit_order = self._admissions
        self.running.append(seq)

    def _make_room(self, seq: Sequence, out: SchedulerOutput, scheduled_ids: set[int]) -> bool:
        """Preempt the latest-admitted running sequences until `seq` can take a slot."""
        while not self.kv.can_append(seq.seq_id, 1):
            victims = [s for s in self.running if s.seq_id not in scheduled_ids]
            victim = max(victims, key=lambda s: s.admit_order)
            self._preempt(victim, out)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        seq.preemptions += 1
        out.preempted.append(seq)
        if self.config.preemption_mode == "swap" and self.kv.can_swap_out(seq.seq_id):
            self.kv.swap_out(seq.seq_id)
            seq.status = Status.SWAPPED
            self.swapped.append(seq)
        else:  # recompute: everything known is prefilled again after re-admission
            self.kv.free(seq.seq_id)
            seq.status, seq.num_computed = Status.WAITING, 0
            heapq.heappush(self.waiting, (self._key(seq), seq))

    # ---- after the step -----------------------------------------------------------------------
    def postprocess(self, out: SchedulerOutput, now_s: float, token_ids: dict[int, int] | None = None
                    ) -> list[Sequence]:
        """Advance every scheduled sequence; returns those that finished."""
        finished = []
        for s in out.scheduled:
            seq = s.seq
            seq.num_computed += s.num_new_tokens
            if not s.produces_token:
                continue
            seq.num_generated += 1
            seq.token_times_s.append(now_s)
            if token_ids is not None:
                seq.output_ids.append(token_ids[seq.seq_id])
            if seq.remaining_outputs == 0:
                self.kv.free(seq.seq_id)
                self.running.remove(seq)
                seq.status, seq.finish_s = Status.FINISHED, now_s
                finished.append(seq)
        return finished
