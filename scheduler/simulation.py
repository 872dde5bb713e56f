"""The SimPy simulation: arrivals, closed-loop sessions and the engine loop on one clock.

    engine:   while work: out = schedule(); result = backend.execute(out)
                          yield env.timeout(result.duration_s); postprocess(out)
    arrivals: yield env.timeout(until next arrival); scheduler.add(request); wake the engine
    sessions: N clients: send a turn, wait for its last token, think, send the next turn
Every submitted request ends finished or rejected with a reason; `run()` checks that.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import pandas as pd
import simpy

from kvcache.manager import KVCacheManager
from scheduler.config import SchedulerConfig
from scheduler.fastpath import decode_run
from scheduler.metrics import StepLog, request_frame, summarize
from scheduler.request import Request, Sequence, Status
from scheduler.scheduler import Scheduler

SESSION_ID_STRIDE = 1 << 32  # synthetic token ids: session i owns [i * stride, (i + 1) * stride)


@dataclass
class SimulationResult:
    requests: pd.DataFrame
    steps: pd.DataFrame
    sessions: pd.DataFrame
    summary: dict
    kv_stats: dict


class Simulation:
    def __init__(self, config: SchedulerConfig, backend, *, budget_tokens: int | None = None,
                 evict_every: int = 1, block_bytes: int = 0, env: simpy.Environment | None = None,
                 log_events: bool = False):
        """log_events: keep `self.log`, a list of (time_s, what, detail) for tests and debugging."""
        self.env = env or simpy.Environment()
        self.config, self.backend = config, backend
        self.kv = KVCacheManager(config.num_blocks, config.block_size, watermark=config.watermark,
                                 enable_prefix_caching=config.enable_prefix_caching,
                                 num_swap_blocks=config.num_swap_blocks, block_bytes=block_bytes,
                                 prefix_id_block_size=config.prefix_id_block_size,
                                 record_copies=getattr(backend, "needs_copies", False),
                                 # real K/V: share a prefix block only once it has been written
                                 publish_on_write=getattr(backend, "needs_copies", False))
        self.scheduler = Scheduler(config, self.kv, budget_tokens)
        self.evict_every = evict_every  # the budgets live in the scheduler (budget_of)
        self.seqs: list[Sequence] = []
        self.steps = StepLog()
        self.session_rows: list[dict] = []
        self._wake = self.env.event()
        self._done_events: dict[int, simpy.Event] = {}
        self._ids = itertools.count()
        self._step_index = 0
        self._swap_bytes_seen = 0
        self.log: list[tuple] | None = [] if log_events else None
        self.env.process(self._engine())

    def _event(self, what: str, detail) -> None:
        if self.log is not None:
            self.log.append((self.env.now, what, detail))

    # ---- submitting work ------------------------------------------------------------------------
    def submit(self, request: Request) -> Sequence:
        seq = self.scheduler.add(request)
        self.seqs.append(seq)
        self._event("reject" if seq.status is Status.REJECTED else "arrive", request.request_id)
        if not self._wake.triggered:
            self._wake.succeed()
        return seq

    def add_trace(self, requests: list[Request]) -> None:
        """Open-loop arrivals at the requests' arrival_s (sorted)."""
        self.env.process(self._arrivals(sorted(requests, key=lambda r: (r.arrival_s, r.request_id))))

    def _arrivals(self, requests: list[Request]):
        for r in requests:
            if r.arrival_s > self.env.now:
                yield self.env.timeout(r.arrival_s - self.env.now)
            self.submit(r)

    def add_sessions(self, scripts, num_clients: int, token_source=None) -> None:
        """num_clients closed-loop clients work through `scripts` (workloads.SessionScript), each
        taking the next unstarted script when its conversation ends. token_source(session_index,
        start, length) -> token ids for a turn's new user tokens (default: synthetic ids unique to
        the session, which is all prefix caching needs)."""
        queue = iter(enumerate(scripts))
        for client in range(num_clients):
            self.env.process(self._client(client, queue, token_source))

    def _client(self, client: int, queue, token_source):
        for index, script in queue:
            history: tuple[int, ...] = ()
            started, turns_done = self.env.now, 0
            for k, turn in enumerate(script.turns):
                if k and turn.think_time_s > 0:
                    yield self.env.timeout(turn.think_time_s)
                new = (token_source(index, len(history), turn.user_tokens) if token_source else
                       tuple(range(index * SESSION_ID_STRIDE + len(history),
                                   index * SESSION_ID_STRIDE + len(history) + turn.user_tokens)))
                prompt = history + tuple(new)
                request = Request(next(self._ids), self.env.now, len(prompt), turn.output_tokens,
                                  session_id=index, turn=k, token_ids=prompt)
                done = self.env.event()
                self._done_events[request.request_id] = done
                seq = self.submit(request)
                if seq.status is Status.REJECTED:
                    break
                yield done
                turns_done += 1
                out = tuple(seq.output_ids) or tuple(range(index * SESSION_ID_STRIDE + len(prompt),
                                                           index * SESSION_ID_STRIDE + len(prompt) + turn.output_tokens))
                history = prompt + out
            self.session_rows.append({"session_id": index, "client": client, "turns": len(script.turns),
                                      "turns_completed": turns_done, "start_s": started, "end_s": self.env.now})

    # ---- the engine -----------------------------------------------------------------------------
    def _engine(self):
        sched, kv, env = self.scheduler, self.kv, self.env
        while True:
            if not sched.has_work:
                self._wake = env.event()
                yield self._wake
                continue
            out = sched.schedule()
            if not out.scheduled:
                if not sched.running and not out.preempted:
                    raise RuntimeError("scheduler made no progress with an idle engine (a bug: a request "
                                       "that can never fit should have been rejected)")
                self._wake = env.event()
                yield self._wake
                continue
            for s in out.scheduled:
                if s.seq.first_scheduled_s is None:
                    s.seq.first_scheduled_s = env.now
            for seq in out.preempted:
                self._event("preempt", seq.seq_id)
                if seq.status is Status.WAITING:  # recompute: its cache (and scores) start over
                    self.backend.on_free(seq.seq_id)
            self._event("step", tuple((s.seq.seq_id, s.num_new_tokens) for s in out.scheduled))
            stats = kv.stats()
            swap_total = stats["swap_out_bytes"] + stats["swap_in_bytes"]
            swap_bytes, self._swap_bytes_seen = swap_total - self._swap_bytes_seen, swap_total
            counts = (out.num_prefill_tokens, out.num_decode_tokens)  # before postprocess changes them
            result = self.backend.execute(out.scheduled, kv, swap_bytes)
            run = decode_run(self, out, result.duration_s) if result.token_ids is None else None
            if run is not None:
                yield from run
                continue
            yield env.timeout(result.duration_s)
            self.complete_step(out, result.duration_s, counts, swap_bytes, result.token_ids)

    def complete_step(self, out, duration_s: float, counts: tuple[int, int], swap_bytes: int = 0,
                      token_ids: dict[int, int] | None = None) -> None:
        """After a step's time has passed: advance sequences, evict, record, release finished."""
        finished = self.scheduler.postprocess(out, self.env.now, token_ids)
        evicted = self._evict(out)
        self.record_step(out, duration_s, counts, swap_bytes, evicted, self.kv.stats())
        self._finish(finished)

    def _evict(self, out) -> int:
        """Keep every decoding sequence within its budget for the next step (it appends one)."""
        if self._step_index % self.evict_every:
            return 0
        total = 0
        for s in out.scheduled:
            seq = s.seq
            budget = self.scheduler.budget_of(seq.request)
            if budget is None or seq.status is not Status.RUNNING or not seq.is_decoding:
                continue
            excess = self.kv.num_tokens(seq.seq_id) + 1 - budget
            if excess > 0:
                slots = self.backend.select_evictions(seq.seq_id, self.kv, excess)
                moves = self.kv.evict_tokens(seq.seq_id, slots, keep_holes=1)
                self.backend.on_moves(seq.seq_id, moves)
                seq.evicted_tokens += excess
                total += excess
        return total

    def record_step(self, out, duration_s: float, counts: tuple[int, int], swap_bytes: int, evicted: int,
                    stats: dict) -> None:
        self.steps.add(time_s=self.env.now, duration_s=duration_s, batch_size=len(out.scheduled),
                       prefill_tokens=counts[0], decode_tokens=counts[1], blocks_used=stats["blocks_used"],
                       blocks_free=stats["blocks_free"], blocks_cached=stats["blocks_cached"],
                       num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
                       num_swapped=len(self.scheduler.swapped), swap_bytes=swap_bytes,
                       preempted=len(out.preempted), evicted_tokens=evicted)
        self._step_index += 1

    def _finish(self, finished: list[Sequence]) -> None:
        for seq in finished:
            self._event("finish", seq.seq_id)
            self.backend.on_free(seq.seq_id)
            done = self._done_events.pop(seq.seq_id, None)
            if done is not None:
                done.succeed()

    # ---- running --------------------------------------------------------------------------------
    def run(self, until: float | None = None) -> SimulationResult:
        wall = time.perf_counter()
        self.env.run(until=until)
        for seq in self.scheduler.rejected:
            done = self._done_events.pop(seq.seq_id, None)
            if done is not None and not done.triggered:
                done.succeed()
        requests = request_frame(self.seqs)
        steps = self.steps.frame()
        if until is None:
            unfinished = requests[~requests.status.isin(["finished", "rejected"])]
            assert unfinished.empty, f"requests neither finished nor rejected: {unfinished.request_id.tolist()[:5]}"
        summary = summarize(requests, steps, float(self.env.now))
        summary["wall_time_s"] = time.perf_counter() - wall
        summary["prefix_hit_rate"] = self.kv.stats()["prefix_hit_rate"]
        sessions = pd.DataFrame(self.session_rows)
        return SimulationResult(requests, steps, sessions, summary, self.kv.stats())
