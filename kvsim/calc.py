"""The arithmetic behind "why O(n^2)": KV cache bytes, attention FLOPs and the size of the score
matrix for a model shape, as MHA / GQA / MQA, in fp16 / INT8 / INT4, with a full cache, a
sliding window, or a score-based top-k budget (H2O-style eviction).

For a context of n tokens, L layers, H query heads, Hkv KV heads, head size d, batch B:
  KV bytes           B * kept * L * 2 * Hkv * (d * bytes_per_element + scale_bytes)
  prefill attention  4 * d * H * L * pairs   (QK^T and PV, 2 FLOPs per multiply-add each)
  decode attention   4 * d * H * L * kept    per new token
  score matrix       n x n per head and layer (n x W for a window); naive attention holds
                     B * H of them (fp32) for a layer at once; FlashAttention never does.
Causal pairs: full n(n+1)/2; window W: W(W+1)/2 + (n - W) W; top-k scores all pairs (it has to
see every score to choose), then keeps k tokens, so it saves memory and decode, not prefill.
INT4 is arithmetic only here (0.5 byte per element plus an fp16 scale per token and KV head).
"""

from __future__ import annotations

from dataclasses import dataclass

CALC_DTYPES = {  # name -> (bytes per element, scale bytes per (token, kv head) for K and again for V)
    "fp32": (4.0, 0), "fp16": (2.0, 0), "bf16": (2.0, 0), "fp8": (1.0, 2), "int8": (1.0, 2), "int4": (0.5, 2),
}


@dataclass(frozen=True)
class Shape:
    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def attention(self) -> str:
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"


def variants(model, kv_heads: tuple[int, ...] | None) -> list[Shape]:
    """The model as it is, and as MHA and MQA (or the KV head counts asked for)."""
    h = model.num_heads
    counts = kv_heads or (h, model.num_kv_heads, 1)
    seen, out = set(), []
    for c in counts:
        if c in seen:
            continue
        if c < 1 or h % c:
            from engine.errors import ConfigError

            raise ConfigError(f"--kv-heads {c}: must divide the {h} query heads of {model.name}")
        seen.add(c)
        out.append(Shape(model.name, model.num_layers, h, c, model.head_dim))
    return out


def kv_bytes_per_token(shape: Shape, dtype: str) -> float:
    per_element, scale = CALC_DTYPES[dtype]
    return shape.num_layers * 2 * shape.num_kv_heads * (shape.head_dim * per_element + scale)


def causal_pairs(n: int, window: int | None = None) -> int:
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def kept_tokens(kind: str, n: int, window: int, top_k: int) -> int:
    return {"full": n, "window": min(n, window), "top-k": min(n, top_k)}[kind]


def kv_rows(shapes: list[Shape], own_kv_heads: int, dtypes, context: int, batch: int, window: int,
            top_k: int, hbm_bytes_per_s: float) -> list[dict]:
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            per_token = kv_bytes_per_token(shape, dtype)
            own = "*" if shape.num_kv_heads == own_kv_heads else ""
            row = {"model": shape.name, "attention": shape.attention + own,
                   "kv_heads": shape.num_kv_heads, "kv_dtype": dtype, "context": context, "batch": batch,
                   "bytes_per_token": per_token}
            for kind in ("full", "window", "top-k"):
                row[f"kv_bytes_{kind}"] = batch * kept_tokens(kind, context, window, top_k) * per_token
            row["decode_floor_us_full"] = row["kv_bytes_full"] / hbm_bytes_per_s * 1e6
            rows.append(row)
    return rows


def attention_rows(shape: Shape, context: int, batch: int, window: int, top_k: int) -> list[dict]:
    n, unit = context, 4 * shape.head_dim * shape.num_heads * shape.num_layers
    rows = []
    for kind, label in (("full", "full"), ("window", f"window {window}"), ("top-k", f"top-k {top_k}")):
        pairs = causal_pairs(n, window if kind == "window" else None)
        per_head = n * (min(n, window) if kind == "window" else n)
        kept = kept_tokens(kind, n, window, top_k)
        rows.append({"model": shape.name, "cache": label, "context": n, "batch": batch, "kept_tokens": kept,
                     "prefill_attn_flops": batch * unit * pairs,
                     "score_matrix_elems_per_head": per_head,
                     "score_matrix_bytes_layer_fp32": batch * shape.num_heads * per_head * 4,
                     "decode_attn_flops_per_token": batch * unit * kept})
    return rows


def human_bytes(x: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:,.1f} {unit}"
    return f"{x:,.0f} B"


def human_count(x: float) -> str:
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:,.1f}{unit}"
    return f"{x:,.0f}"
