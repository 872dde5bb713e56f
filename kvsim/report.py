"""`kvsim report RUN_DIR`: the plots and a self-contained HTML report (PNG embedded as base64,
tables from the run's DataFrames) of any run directory. The commands call `build` at the end."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from engine.errors import KvsimError
from kvsim import plots
from kvsim.rundir import read_json, read_table, write_text
from kvsim.tables import formatted, summary_frame

TRACE_ATTRIBUTION = ("Workload: Azure LLM inference trace 2023, conversation service (CC-BY-4.0), from "
                     "P. Patel et al., \"Splitwise: Efficient Generative LLM Inference Using Phase Splitting\", "
                     "ISCA 2024.")

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{padding:4px 8px;border-bottom:1px solid #ddd;
text-align:right}th{background:#f3f3f3}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}
figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:13px}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:12px}.meta,.note{color:#555;font-size:14px}"""


def records_of(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise KvsimError(f"{run_dir}: not a kvsim run directory (no summary.json)")
    data = read_json(path)
    return data if isinstance(data, list) else [data]


def make_plots(run_dir: Path, manifest: dict, records: list[dict]) -> list[tuple[Path, str]]:
    """(png, caption) of every plot this run's tables allow."""
    run_dir, out = Path(run_dir), Path(run_dir) / "plots"
    made: list[tuple[Path, str]] = []
    summary = pd.DataFrame(records)
    if manifest.get("command") == "sweep":
        made.append((plots.throughput_vs_sessions(summary, out / "throughput_vs_sessions.png"),
                     "Output tokens/s against concurrent sessions; the star marks each curve's knee "
                     f"(the smallest N after which a doubling adds < {manifest.get('knee_gain', 0.05):.0%})."))
        made.append((plots.latency_vs_sessions(summary, out / "latency_vs_sessions.png"),
                     "TTFT p99 and TPOT p50 against concurrent sessions."))
    requests, steps = read_table(run_dir, "requests"), read_table(run_dir, "steps")
    labels = {r.get("point", "run"): plots.label(r) for r in records}
    if manifest.get("command") == "sweep":  # one KV line per curve: its largest point
        largest = summary.sort_values("num_sessions").groupby(["policy", "kv_dtype"], sort=False).tail(1)
        labels = {r["point"]: f"{plots.label(r)} n{r['num_sessions']}" for r in largest.to_dict("records")}
    if requests is not None and len(requests) and manifest.get("command") != "sweep":
        series = {labels.get(k, k): df for k, df in _by_point(requests)}
        made.append((plots.latency_cdfs(series, out / "latency_cdf.png"),
                     "CDFs of time to first token and time per output token over completed requests."))
    if steps is not None and len(steps):
        series = {labels[k]: df for k, df in _by_point(steps) if k in labels}
        capacity = {labels[r.get("point", "run")]: r.get("num_blocks") for r in records
                    if r.get("point", "run") in labels}
        made.append((plots.kv_blocks(series, capacity, out / "kv_blocks.png"),
                     "KV cache blocks in use after each engine step (max per time bin); dotted: capacity."))
    quality = plots.quality_vs_budget(summary, out / "quality_vs_budget.png")
    if quality is not None:
        made.append((quality, "Perplexity and top-1 agreement against the budget (joined from kvsim quality)."))
    return made


def _by_point(df: pd.DataFrame):
    if "point" not in df:
        yield "run", df
        return
    for key, part in df.groupby("point", sort=False):
        yield key, part


def notes(manifest: dict, records: list[dict]) -> list[str]:
    out = []
    models = sorted({str(r.get("cost_model")) for r in records if r.get("cost_model")})
    out += [f"Cost model: {m}." for m in models]
    if any(r.get("backend") == "analytic" for r in records) and any(r.get("policy") != "full" for r in records):
        out.append("Analytic backend: it counts tokens, not which tokens are kept, so every evicting policy "
                   "at the same budget and dtype has the same timing and memory; they differ in quality.")
    if manifest.get("command") == "compare":
        if manifest.get("quality"):
            out.append(f"Quality columns joined from {manifest['quality']} on (policy, budget, kv_dtype).")
        else:
            out.append("Quality columns are empty: run `kvsim quality --out DIR` and pass `--quality "
                       "DIR/quality.csv` to join perplexity, top-1 agreement and KL.")
    if manifest.get("command") == "sweep":
        out.append("Closed-loop clients; throughput and latency are measured over [warmup_s, duration_s) of "
                   "simulated time; requests still running at the end are counted as requests_in_flight.")
        for curve, n in (manifest.get("knees") or {}).items():
            out.append(f"Knee of {curve}: {n if n is not None else 'not reached in the range'}.")
    if manifest.get("default_trace"):
        out.append(TRACE_ATTRIBUTION)
    return out


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def build(run_dir: Path) -> Path:
    """Write plots/*.png and report.html for a run directory; returns the report's path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KvsimError(f"{run_dir}: no such run directory")
    records = records_of(run_dir)
    manifest = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    figures = make_plots(run_dir, manifest, records)
    config = (run_dir / "config.toml").read_text() if (run_dir / "config.toml").is_file() else ""
    command = manifest.get("command", "run")
    table = formatted(summary_frame(records)).to_html(index=False, border=0)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>kvsim {command}: {html.escape(run_dir.name)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>kvsim {command}</h1>",
             f"<p class='meta'>{html.escape(' '.join(manifest.get('argv', [])))}<br>"
             f"{html.escape(manifest.get('created', ''))} &middot; "
             f"kvsim {html.escape(manifest.get('kvsim_version', '?'))}"
             f" &middot; {html.escape(str(run_dir))}</p>",
             "<h2>Summary</h2>", table,
             *[f"<p class='note'>{html.escape(n)}</p>" for n in notes(manifest, records)],
             "<h2>Plots</h2>",
             *[f"<figure><img alt='{p.stem}' src='{_img(p)}'><figcaption>{html.escape(c)}</figcaption></figure>"
               for p, c in figures],
             "<h2>Configuration</h2>", f"<pre>{html.escape(config)}</pre>",
             "<h2>Files</h2><ul>",
             *[f"<li>{html.escape(str(p.relative_to(run_dir)))}</li>" for p in sorted(run_dir.rglob("*"))
               if p.is_file() and not p.name.startswith(".") and p.parts[len(run_dir.parts)] != "points"],
             "</ul></body></html>"]
    return write_text(run_dir / "report.html", "\n".join(parts))
