"""Metrics: records collected during a run, turned into pandas DataFrames once at the end.

Column names follow vLLM's benchmark (`ttft_ms`, `tpot_ms`, `itl_ms`, `e2el_ms`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scheduler.request import Sequence, Status

STEP_COLUMNS = ("time_s", "duration_s", "batch_size", "prefill_tokens", "decode_tokens", "blocks_used",
                "blocks_free", "blocks_cached", "num_running", "num_waiting", "num_swapped",
                "swap_bytes", "preempted", "evicted_tokens")


@dataclass
class StepLog:
    """Column lists, appended per step (a dict of lists is the cheapest record in Python)."""

    columns: dict[str, list] = field(default_factory=lambda: {c: [] for c in STEP_COLUMNS})

    def add(self, **row) -> None:
        for name in STEP_COLUMNS:
            self.columns[name].append(row[name])

    def extend(self, n: int, **values) -> None:
        """n rows at once; a value is a list of n, or one value for every row."""
        for name in STEP_COLUMNS:
            v = values[name]
            self.columns[name].extend(v if isinstance(v, list) else [v] * n)

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.columns)
        df.insert(0, "step", np.arange(len(df)))
        return df


def request_frame(seqs: list[Sequence]) -> pd.DataFrame:
    rows = []
    for s in sorted(seqs, key=lambda s: s.seq_id):
        r = s.request
        times = s.token_times_s
        first = times[0] if times else None
        itl = np.diff(times) * 1e3 if len(times) > 1 else np.array([])
        done = s.status is Status.FINISHED
        rows.append({
            "request_id": r.request_id, "session_id": r.session_id, "turn": r.turn,
            "arrival_s": r.arrival_s, "prompt_tokens": r.prompt_tokens, "output_tokens": s.num_generated,
            "first_scheduled_s": s.first_scheduled_s, "first_token_s": first, "finish_s": s.finish_s,
            "queue_ms": (s.first_scheduled_s - r.arrival_s) * 1e3 if s.first_scheduled_s is not None else np.nan,
            "ttft_ms": (first - r.arrival_s) * 1e3 if first is not None else np.nan,
            "tpot_ms": float(itl.mean()) if done and len(itl) else np.nan,
            "itl_ms": itl.tolist(),
            "e2el_ms": (s.finish_s - r.arrival_s) * 1e3 if done else np.nan,
            "preemptions": s.preemptions, "evicted_tokens": s.evicted_tokens,
            "prefix_hit_tokens": s.prefix_hit_tokens,
            "status": s.status.value, "rejected": s.status is Status.REJECTED, "reject_reason": s.reject_reason,
        })
    return pd.DataFrame(rows)


def _pcts(values: pd.Series, name: str) -> dict[str, float]:
    v = values.dropna().to_numpy(dtype=float)
    out = {}
    for p in (50, 90, 99):
        out[f"{name}_p{p}"] = float(np.percentile(v, p)) if len(v) else float("nan")
    out[f"{name}_mean"] = float(v.mean()) if len(v) else float("nan")
    return out


def summarize(requests: pd.DataFrame, steps: pd.DataFrame, sim_time_s: float,
              slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None) -> dict[str, float]:
    done = requests[requests.status == "finished"]
    span = sim_time_s if sim_time_s > 0 else float("nan")
    out_tokens = float(done.output_tokens.sum())
    total_tokens = out_tokens + float(done.prompt_tokens.sum())
    itl = pd.Series([x for lst in done.itl_ms for x in lst], dtype=float)
    summary = {
        "requests_submitted": int(len(requests)), "requests_completed": int(len(done)),
        "requests_rejected": int(requests.rejected.sum()),
        "sim_time_s": sim_time_s, "requests_per_s": len(done) / span,
        "output_tokens_per_s": out_tokens / span, "total_tokens_per_s": total_tokens / span,
        **_pcts(done.ttft_ms, "ttft_ms"), **_pcts(done.tpot_ms, "tpot_ms"), **_pcts(itl, "itl_ms"),
        **_pcts(done.e2el_ms, "e2el_ms"),
        "preemptions": int(requests.preemptions.sum()),
        "evicted_tokens": int(requests.evicted_tokens.sum()),
        "prefix_hit_tokens": int(requests.prefix_hit_tokens.sum()),
        "peak_kv_blocks": int(steps.blocks_used.max()) if len(steps) else 0,
        "num_steps": int(len(steps)),
    }
    if slo_ttft_ms is not None or slo_tpot_ms is not None:
        ok = pd.Series(True, index=done.index)
        if slo_ttft_ms is not None:
            ok &= done.ttft_ms <= slo_ttft_ms
        if slo_tpot_ms is not None:
            ok &= done.tpot_ms.fillna(0) <= slo_tpot_ms
        summary["goodput_requests_per_s"] = float(ok.sum()) / span
    return summary
