"""Write a quality run: quality.csv/.parquet, passkey.csv/.parquet, quality.json and PNG plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kvsim.rundir import atomic, write_json, write_table


def _line_plot(df: pd.DataFrame, column: str, ylabel: str, path: Path, logy: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, df.kv_dtype.nunique(), figsize=(6 * df.kv_dtype.nunique(), 4.2), squeeze=False)
    for ax, (dtype, part) in zip(axes[0], df.groupby("kv_dtype", sort=False)):
        full = part[part.policy == "full"][column]
        for policy, rows in part[part.policy != "full"].groupby("policy", sort=False):
            rows = rows.sort_values("budget")
            ax.plot(rows.budget, rows[column], marker="o", label=policy)
        if len(full):
            ax.axhline(float(full.iloc[0]), color="black", linestyle="--", label="full cache")
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("KV budget (tokens per sequence)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"KV {dtype}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _passkey_plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(df.groupby(["policy", "budget"], sort=False))
    cols = min(4, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, ((policy, budget), part) in zip(axes.flat, groups):
        grid = part.pivot_table(index="depth", columns="length", values="correct", aggfunc="mean")
        ax.imshow(grid.to_numpy(dtype=float), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        ax.set_xticks(range(grid.shape[1]), grid.columns)
        ax.set_yticks(range(grid.shape[0]), [f"{d:.0%}" for d in grid.index])
        ax.set_title(f"{policy}" + (f" @{budget}" if budget else ""), fontsize=9)
        ax.set_xlabel("length (tokens)", fontsize=8)
        ax.set_ylabel("depth", fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    fig.suptitle("passkey retrieval (green = found)")
    fig.tight_layout()
    atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_quality(run_dir: Path, result: dict) -> None:
    run_dir = Path(run_dir)
    quality, passkey = result["quality"], result["passkey"]
    write_table(run_dir, "quality", quality)
    if len(passkey):
        write_table(run_dir, "passkey", passkey)
        _passkey_plot(passkey, run_dir / "passkey.png")
    _line_plot(quality, "ppl", "perplexity (positions past the budget)", run_dir / "ppl_vs_budget.png", logy=True)
    _line_plot(quality, "top1_agreement", "top-1 agreement with fp16 full cache", run_dir / "agreement_vs_budget.png")
    summary = dict(result["summary"])
    if len(passkey):
        summary["passkey_accuracy"] = passkey.groupby(["policy", "budget"]).correct.mean().reset_index().to_dict("records")
    write_json(run_dir / "quality.json", {**summary, "rows": quality.to_dict("records")})
