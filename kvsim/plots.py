"""The PNG plots of a run (matplotlib, Agg): latency CDFs, KV blocks over time, throughput and
latency against concurrent sessions with the knee marked, quality against budget. Each function
takes the run's DataFrames and writes one file atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from kvsim.rundir import atomic  # noqa: E402

MAX_LINE_POINTS = 2000  # a step table can have 10^5+ rows; a line needs far fewer


def label(params: dict) -> str:
    text = f"{params['policy']} {params['kv_dtype']}"
    budget = params.get("budget_tokens")
    return text + (f" b{int(budget)}" if budget is not None and budget == budget else "")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def _style(names: list[str]) -> list[dict]:
    """A colour per line, and a dash pattern per policy (the first word of a label), so lines that
    coincide (e.g. two evicting policies in analytic mode) still show as two."""
    colors = plt.get_cmap("tab10")
    dashes = ["-", "--", ":", "-."]
    policies = list(dict.fromkeys(name.split()[0] if name else "" for name in names))
    return [dict(color=colors(i % 10), linestyle=dashes[policies.index(name.split()[0] if name else "") % 4],
                 linewidth=1.6) for i, name in enumerate(names)]


def latency_cdfs(series: dict[str, pd.DataFrame], path: Path) -> Path:
    """TTFT and TPOT CDFs, one line per point (requests frames)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (name, df), style in zip(series.items(), _style(list(series))):
        for ax, col in zip(axes, ("ttft_ms", "tpot_ms")):
            v = np.sort(df[col].dropna().to_numpy(dtype=float))
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=name, **style)
    for ax, title, scale in zip(axes, ("time to first token", "time per output token"), ("log", "linear")):
        ax.set_xscale(scale)
        ax.set_xlabel(f"{title} (ms{', log scale' if scale == 'log' else ''})")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Latency CDFs")
    return _save(fig, path)


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_LINE_POINTS points: the maximum of y per time bin (peaks stay visible)."""
    if len(x) <= MAX_LINE_POINTS:
        return x, y
    bins = np.linspace(x[0], x[-1], MAX_LINE_POINTS + 1)
    index = np.clip(np.searchsorted(bins, x, side="right") - 1, 0, MAX_LINE_POINTS - 1)
    top = np.full(MAX_LINE_POINTS, -np.inf)
    np.maximum.at(top, index, y)
    keep = np.isfinite(top)
    return ((bins[:-1] + bins[1:]) / 2)[keep], top[keep]


def kv_blocks(series: dict[str, pd.DataFrame], capacity: dict[str, int], path: Path) -> Path:
    """Blocks in use after each step, with each cache's capacity dashed (steps frames)."""
    fig, ax = plt.subplots(figsize=(11, 4.2))
    for (name, df), style in zip(series.items(), _style(list(series))):
        if len(df):
            x, y = _thin(df.time_s.to_numpy(dtype=float), df.blocks_used.to_numpy(dtype=float))
            ax.plot(x, y, label=name, **{**style, "linewidth": 1})
            if capacity.get(name):
                ax.axhline(capacity[name], color=style["color"], linestyle=":", linewidth=1)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("KV blocks used")
    _thousands(ax)
    ax.set_title("KV cache blocks in use (dotted: capacity)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def _sessions_axis(ax, sessions) -> None:
    """log2 axis labelled with the session counts themselves (1, 2, 4, ...), not powers of 2."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(n) for n in sessions))
    ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.minorticks_off()


def _thousands(ax) -> None:
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _curves(points: pd.DataFrame):
    for key, df in points.groupby(["policy", "kv_dtype", "budget_tokens"], dropna=False, sort=False):
        yield label(dict(zip(("policy", "kv_dtype", "budget_tokens"), key))), df.sort_values("num_sessions")


def throughput_vs_sessions(points: pd.DataFrame, path: Path) -> Path:
    """Output tokens/s against concurrent sessions, one curve per cache config, knee marked."""
    fig, ax = plt.subplots(figsize=(9, 5))
    curves = list(_curves(points))
    for (name, df), style in zip(curves, _style([c[0] for c in curves])):
        ax.plot(df.num_sessions, df.output_tokens_per_s, marker="o", label=name, **style)
        knee = df[df.get("is_knee", False) == True]  # noqa: E712 (a column of bools)
        if len(knee):
            n, t = knee.num_sessions.iloc[0], knee.output_tokens_per_s.iloc[0]
            ax.plot([n], [t], marker="*", markersize=18, color=style["color"], markeredgecolor="black")
            ax.annotate(f"knee {n}", (n, t), textcoords="offset points", xytext=(6, -14), fontsize=8)
    _sessions_axis(ax, points.num_sessions)
    _thousands(ax)
    ax.set_xlabel("concurrent sessions (closed-loop clients, log2 scale)")
    ax.set_ylabel("output tokens / s")
    ax.set_title("Throughput vs concurrent sessions (star: knee, where doubling stops paying)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency_vs_sessions(points: pd.DataFrame, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    curves = list(_curves(points))
    for (name, df), style in zip(curves, _style([c[0] for c in curves])):
        axes[0].plot(df.num_sessions, df.ttft_ms_p99, marker="o", label=name, **style)
        axes[1].plot(df.num_sessions, df.tpot_ms_p50, marker="o", label=name, **style)
    for ax, what in zip(axes, ("TTFT p99 (ms, log)", "TPOT p50 (ms)")):
        _sessions_axis(ax, points.num_sessions)
        ax.set_xlabel("concurrent sessions (log2 scale)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.suptitle("Latency vs concurrent sessions")
    return _save(fig, path)


def quality_vs_budget(summary: pd.DataFrame, path: Path) -> Path | None:
    """Perplexity and top-1 agreement against the budget, per policy and dtype (needs quality)."""
    if "ppl" not in summary or summary.ppl.isna().all():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    evicting = summary[summary.policy != "full"]
    groups = list(evicting.groupby(["policy", "kv_dtype"], sort=False))
    for ((policy, dtype), df), style in zip(groups, _style([f'{p} {d}' for (p, d), _ in groups])):
        df = df.sort_values("budget_tokens")
        for ax, col in zip(axes, ("ppl", "top1_agreement")):
            ax.plot(df.budget_tokens, df[col], marker="o", label=f"{policy} {dtype}", **style)
    for _, row in summary[summary.policy == "full"].iterrows():
        for ax, col in zip(axes, ("ppl", "top1_agreement")):
            if row[col] == row[col]:
                ax.axhline(row[col], linestyle=":", color="gray", linewidth=1)
                ax.annotate(f"full {row.kv_dtype}", (1, row[col]), xycoords=("axes fraction", "data"),
                            ha="right", va="bottom", fontsize=7)
    for ax, what in zip(axes, ("perplexity (lower is better)", "top-1 agreement with the full cache")):
        _sessions_axis(ax, summary.budget_tokens.dropna())
        ax.set_xlabel("budget (tokens kept per sequence, log2 scale)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Quality vs budget (from kvsim quality)")
    return _save(fig, path)
