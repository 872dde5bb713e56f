"""The KV calculator: KV cache bytes, attention FLOPs and score-matrix size of a real model shape
for MHA / GQA / MQA, fp16 / INT8 / INT4, and a full cache, a sliding window or a top-k budget.
The arithmetic behind "why O(n^2)" (see kvsim/calc.py for every formula)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.gpus import GPUS
from kvsim.calc import CALC_DTYPES
from kvsim.config import opt

NAME = "calc"
HELP = "KV bytes, attention FLOPs and score-matrix size (MHA/GQA/MQA, fp16/INT8/INT4, full/window/top-k)"
DEFAULTS: dict = {}


@dataclass(frozen=True)
class Config:
    model: tuple[str, ...] = opt(("llama-3.1-8b",), "model presets (kvsim model list) or HF checkpoint dirs",
                                 metavar="SHAPE[,SHAPE]")
    context: tuple[int, ...] = opt((32768,), "context lengths in tokens", metavar="N[,N]")
    batch: int = opt(1, "sequences")
    kv_dtypes: tuple[str, ...] = opt(("fp16", "int8", "int4"), "KV dtypes", choices=tuple(CALC_DTYPES))
    kv_heads: tuple[int, ...] | None = opt(None, "KV head counts to show (none: MHA, the model's own, MQA)",
                                           metavar="N[,N]")
    window: int = opt(4096, "sliding-window size (tokens)")
    top_k: int = opt(1024, "top-k budget (tokens a score-based policy keeps)")
    gpu: str = opt("h100", "GPU whose HBM bandwidth gives the decode floor", choices=tuple(GPUS))
    json: bool = opt(False, "print the tables as one JSON object {kv: [...], attention: [...]}")

    def __post_init__(self):
        from engine.errors import ConfigError

        for name in ("batch", "window", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if min(self.context) < 1:
            raise ConfigError(f"--context: must be >= 1, got {self.context}")


def tables(config: Config) -> tuple[list[dict], list[dict]]:
    from kvsim.calc import attention_rows, kv_rows, variants
    from kvsim.simulate import model_config

    kv, attention = [], []
    bandwidth = GPUS[config.gpu].hbm_bytes_per_s
    for name in config.model:
        model = model_config(name)
        shapes = variants(model, config.kv_heads)
        for n in config.context:
            kv += kv_rows(shapes, model.num_kv_heads, config.kv_dtypes, n, config.batch, config.window,
                          config.top_k, bandwidth)
            attention += attention_rows(shapes[0], n, config.batch, config.window, config.top_k)
    return kv, attention


def run(config: Config, argv: list[str]) -> int:
    import pandas as pd

    from kvsim.calc import human_bytes, human_count
    from kvsim.rundir import dumps
    from kvsim.tables import render

    kv, attention = tables(config)
    if config.json:
        print(dumps({"kv": kv, "attention": attention}))
        return 0
    w, k = config.window, config.top_k
    kv_view = pd.DataFrame([{
        "model": r["model"], "context": r["context"], "attention": r["attention"], "kv heads": r["kv_heads"],
        "kv dtype": r["kv_dtype"], "bytes/token": human_bytes(r["bytes_per_token"]),
        "KV full": human_bytes(r["kv_bytes_full"]), f"KV window {w}": human_bytes(r["kv_bytes_window"]),
        f"KV top-k {k}": human_bytes(r["kv_bytes_top-k"]),
        f"decode floor full ({config.gpu}) us": round(r["decode_floor_us_full"], 1)} for r in kv])
    kv_view.attrs["decimals"] = {f"decode floor full ({config.gpu}) us": 1}
    att_view = pd.DataFrame([{
        "model": r["model"], "context": r["context"], "cache": r["cache"], "kept tokens": r["kept_tokens"],
        "prefill attn FLOPs": human_count(r["prefill_attn_flops"]),
        "score matrix / head": human_count(r["score_matrix_elems_per_head"]),
        "scores of a layer (fp32)": human_bytes(r["score_matrix_bytes_layer_fp32"]),
        "decode attn FLOPs/token": human_count(r["decode_attn_flops_per_token"])} for r in attention])
    print(f"KV cache (batch {config.batch}; * = the model's own attention)\n")
    print(render(kv_view))
    print(f"\nAttention compute (query heads as the model; batch {config.batch})\n")
    print(render(att_view))
    print("\nPrefill attention and the score matrix grow with n^2 (top-k must still score every pair); KV bytes "
          "and decode attention grow with the tokens kept.")
    return 0
