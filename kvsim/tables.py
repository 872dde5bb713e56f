"""The summary table every command prints and the report shows: one row per point, the columns a
reader compares first, with units in the headers."""

from __future__ import annotations

import math

import pandas as pd

QUALITY_COLUMNS = ("ppl", "top1_agreement", "kl")

# (header, record key, scale, decimals)
_COLUMNS = [
    ("policy", "policy", None, None),
    ("kv dtype", "kv_dtype", None, None),
    ("budget", "budget_tokens", None, 0),
    ("sessions", "num_sessions", None, 0),
    ("out tok/s", "output_tokens_per_s", 1, 0),
    ("total tok/s", "total_tokens_per_s", 1, 0),
    ("TTFT p50 ms", "ttft_ms_p50", 1, 1),
    ("TTFT p99 ms", "ttft_ms_p99", 1, 1),
    ("TPOT p50 ms", "tpot_ms_p50", 1, 3),
    ("TPOT p99 ms", "tpot_ms_p99", 1, 3),
    ("peak KV MiB", "peak_kv_bytes", 2**-20, 0),
    ("max seqs held", "max_seqs_held", None, 0),
    ("preemptions", "preemptions", None, 0),
    ("rejected", "requests_rejected", None, 0),
    ("ppl", "ppl", 1, 3),
    ("top-1 agree", "top1_agreement", 1, 3),
    ("KL", "kl", 1, 4),
]


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def summary_frame(records: list[dict]) -> pd.DataFrame:
    """Display table: a column is left out when no record has it (e.g. sessions in compare);
    quality columns stay (empty) in compare so their absence is visible."""
    rows = []
    keep = [c for c in _COLUMNS if any(c[1] in r for r in records)]
    for r in records:
        row = {}
        for header, key, scale, decimals in keep:
            value = r.get(key)
            if _blank(value):
                row[header] = ""
            elif scale is not None:
                row[header] = round(float(value) * scale, decimals)
            elif decimals == 0:
                row[header] = int(value)
            else:
                row[header] = value
        if r.get("is_knee"):
            row["knee"] = "<- knee"
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["decimals"] = {header: decimals for header, _, _, decimals in keep}
    if "knee" in df:
        df["knee"] = df["knee"].fillna("")
    return df


def formatted(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text: floats with their column's decimals, thousands separated."""
    decimals = df.attrs.get("decimals", {})

    def cell(v, column):
        if isinstance(v, float):
            return f"{v:,.{decimals.get(column, 3)}f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    return pd.DataFrame([[cell(v, c) for v, c in zip(row, df.columns)] for row in df.itertuples(index=False)],
                        columns=df.columns)


def render(df: pd.DataFrame) -> str:
    """Plain aligned text (numbers right-aligned)."""
    cells = formatted(df).values.tolist()
    headers = list(df.columns)
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    text = [_fmt_row(headers, widths, df), _fmt_row(["-" * w for w in widths], widths, df)]
    text += [_fmt_row(r, widths, df) for r in cells]
    return "\n".join(text)


def _fmt_row(values, widths, df) -> str:
    out = []
    for v, w, col in zip(values, widths, df.columns):
        numeric = pd.api.types.is_numeric_dtype(df[col])
        out.append(v.rjust(w) if numeric else v.ljust(w))
    return "  ".join(out).rstrip()
