"""Engine decode speed on a GPU (issue 10): kvsim's ModelRunner against HF transformers and the
memory floor, in one run.

    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 bench/engine.py [--out DIR] [--budget-s 300]
    PYTHONPATH=. python3 bench/engine.py --smoke --out /tmp/engine-smoke    # CPU, tiny random models

Per model (smollm2-135m with its real weights, llama-3.1-8b with random ones; bf16 weights) and
KV dtype (the model's dtype, and INT8), batch and context:
- ours: one PagedKVStore per (model, KV dtype), sized for the largest row that fits, filled with
  random K/V; each row's sequences get shuffled block tables, `context` cached tokens, then
  decode steps through ModelRunner.run + greedy argmax, the token fed back as an engine does.
  step_ms: median CUDA-event time from just before run() to after the argmax (what the compute
  backend charges a step); host_ms: perf_counter over the whole step incl. building the inputs
  and reading the tokens back; pipelined_ms: steps issued back to back without reading tokens
  (max(host, GPU) per step where the runner lets the host run ahead).
- the floor: (weight bytes read + KV bytes read per step, INT8 scales included) / copy
  bandwidth measured in the same run (bytes read + written, as bench/kernels.py).
- HF transformers `generate` with its static cache on the same weights (shared, not copied):
  decode time per token = (T(1 + N new tokens) - T(1)) / N, torch.compile disabled.
Rows that need more KV than fits are recorded as "does not fit"; rows past --budget-s as
"skipped (budget)". engine_<gpu>.json is written to --out (default $OUT, else bench/results)
after every row; the table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

# As a script, bench/ comes first on sys.path and this file would shadow the `engine` package
# (and bench/kernels.py the `kernels` one), so the repository root takes its place.
_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]

import torch  # noqa: E402

from bench.common import copy_bandwidth, environment, logit_agreement, write_json  # noqa: E402
from engine.config import ModelConfig, RopeScaling  # noqa: E402
from engine.loader import LoadedModel, load_model, random_model  # noqa: E402
from engine.profile import Stopwatch  # noqa: E402
from engine.runner import ModelRunner, StepInput  # noqa: E402
from kvcache.kv_store import PagedKVStore  # noqa: E402
from kvcache.sizing import KVShape, kv_bytes_per_token  # noqa: E402

BLOCK_SIZE = 16
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 2**30

# Issue 10's floors. kv "float" = the model's dtype. x_floor gates name one row; x_hf gates every
# row of the model with batch >= min_batch where HF ran.
GATES = [
    {"gate": "step<=1.25x floor", "model": "llama-3.1-8b", "batch": 64, "ctx": 2048, "metric": "x_floor", "max": 1.25},
    {"gate": "step<=2x floor", "model": "smollm2-135m", "batch": 256, "ctx": 2048, "metric": "x_floor", "max": 2.0},
    {"gate": "tok/s>=5x HF", "model": "smollm2-135m", "min_batch": 16, "metric": "x_hf", "min": 5.0},
    {"gate": "tok/s>=1.5x HF", "model": "llama-3.1-8b", "min_batch": 16, "metric": "x_hf", "min": 1.5},
]


@dataclass
class Settings:
    device: str = "cuda"
    dtype: str = "bf16"  # weights, activations and the float KV rows
    models: tuple = ("smollm2-135m", "llama-3.1-8b")
    random_weights: tuple = ("llama-3.1-8b",)
    batches: tuple = (1, 16, 64, 256)
    contexts: tuple = (512, 2048, 8192)
    kv_dtypes: tuple = ()  # () = (dtype, "int8")
    hf_contexts: tuple = (512, 2048)
    hf_batches: dict = field(default_factory=lambda: {"smollm2-135m": (1, 16, 64, 256), "llama-3.1-8b": (1, 16, 64)})
    warmup_steps: int = 3  # the first calls capture graphs / compile kernels
    timed_steps: int = 24
    pipelined_steps: int = 8
    hf_new_tokens: int = 32
    budget_s: float = 300.0
    # Each model's sections end at these fractions of the budget (later ones get what is left).
    section_ends: dict = field(default_factory=lambda: {"smollm2-135m": (0.3, 0.42), "llama-3.1-8b": (0.8, 1.0)})
    reserve_gib: float = 4.0  # GPU memory left free beside the KV store (activations, graphs, logits)
    kv_capacity_bytes: int | None = None  # None: free GPU memory - reserve
    copy_bytes: int = GIB
    runner_kwargs: dict = field(default_factory=dict)
    gates: list = field(default_factory=lambda: [dict(g) for g in GATES])
    smoke: bool = False
    out: str = "bench/results"
    seed: int = 0

    def __post_init__(self):
        self.kv_dtypes = tuple(self.kv_dtypes) or (self.dtype, "int8")


TINY = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=256,
            max_position_embeddings=256)
SMOKE_MODELS = {
    "tiny-tied": ModelConfig("tiny-tied", **TINY, rope_theta=100000.0, tie_word_embeddings=True),
    "tiny-llama3": ModelConfig("tiny-llama3", **TINY, rope_theta=500000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64)),
}


def smoke_settings(out: str) -> Settings:
    """Tiny random models on the CPU: every code path of the GPU run, in seconds. The KV capacity
    lets every INT8 row fit but not the largest float one."""
    models = tuple(SMOKE_MODELS)
    return Settings(device="cpu", models=models, random_weights=models, batches=(1, 4), contexts=(32, 80),
                    hf_contexts=(32,), hf_batches={m: (1, 4) for m in models}, warmup_steps=2, timed_steps=3,
                    pipelined_steps=2, hf_new_tokens=3, section_ends={m: (0.9, 1.0) for m in models},
                    kv_capacity_bytes=64 * 1024, copy_bytes=16 * 2**20, smoke=True, out=out,
                    gates=[{"gate": "step<=1.25x floor", "model": "tiny-llama3", "batch": 4, "ctx": 32,
                            "metric": "x_floor", "max": 1.25},
                           {"gate": "step<=2x floor", "model": "tiny-tied", "batch": 4, "ctx": 80,
                            "metric": "x_floor", "max": 2.0},
                           {"gate": "tok/s>=5x HF", "model": "tiny-tied", "min_batch": 4, "metric": "x_hf", "min": 5.0}])


def log(msg: str) -> None:
    print(msg, flush=True)


def short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:600]


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_cuda_memory() -> None:
    """Give cached blocks back; never raises (after a CUDA error it has nothing to add)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except Exception as e:
            log(f"free_cuda_memory: {short_error(e)}")


# ---------------------------------------------------------------- models
def load(name: str, s: Settings) -> LoadedModel:
    dtype = DTYPES[s.dtype]
    if s.smoke:
        cfg = SMOKE_MODELS[name]
        return LoadedModel(cfg, random_model(cfg, device=s.device, dtype=dtype, seed=s.seed), None, "random (smoke)")
    return load_model(name, device=s.device, dtype=dtype, random_weights=name in s.random_weights, seed=s.seed)


def weight_info(model) -> dict:
    """Bytes of the unique weights, and what a decode step reads: everything but an untied
    embedding table, of which only the batch's rows are read."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights once
    emb = model.embed_tokens.weight
    tied = model.lm_head.weight.data_ptr() == emb.data_ptr()
    unread = 0 if tied else emb.numel() * emb.element_size()
    return {"weight_bytes": total, "weight_bytes_read_fixed": total - unread,
            "embedding_row_bytes": emb.shape[1] * emb.element_size(), "tied_embeddings": tied,
            "weight_dtype": str(emb.dtype).replace("torch.", "")}


def hf_twin(loaded: LoadedModel):
    """transformers.LlamaForCausalLM built on the meta device from our config, holding our very
    tensors (assign=True: shared, not copied). Only the RoPE buffers are made anew."""
    import transformers

    transformers.logging.set_verbosity_error()
    c = loaded.config
    rs = c.rope_scaling
    hc = transformers.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta,
        rope_scaling=None if rs is None else {
            "rope_type": "llama3", "factor": rs.factor, "low_freq_factor": rs.low_freq_factor,
            "high_freq_factor": rs.high_freq_factor, "original_max_position_embeddings": rs.original_max_position_embeddings},
        max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=c.tie_word_embeddings,
        attention_bias=False, mlp_bias=False, hidden_act="silu", pad_token_id=0, bos_token_id=None,
        eos_token_id=None, attn_implementation="sdpa")
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(hc)
    ours = loaded.model.state_dict()  # detached views of our parameters
    hf.load_state_dict({k if k == "lm_head.weight" else f"model.{k}": v for k, v in ours.items()},
                       assign=True, strict=True)
    device = loaded.model.embed_tokens.weight.device
    with torch.device(device):
        hf.model.rotary_emb = type(hf.model.rotary_emb)(config=hf.config)
    left = [n for n, t in [*hf.named_parameters(), *hf.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"HF twin: tensors still on the meta device: {left[:5]}")
    hf_params = dict(hf.named_parameters(remove_duplicate=False))
    shared = all(hf_params[k if k == "lm_head.weight" else f"model.{k}"].data_ptr() == v.data_ptr()
                 for k, v in ours.items())
    return hf.eval(), {"transformers": transformers.__version__, "attn_implementation": hf.config._attn_implementation,
                       "weights_shared": shared}


def hf_check(loaded: LoadedModel, hf) -> dict:
    """Both models' last-token logits on one 16-token prompt: the peer is the same model."""
    from engine.generate import generate

    ids = list(range(11, 27))
    ours = generate(loaded, [ids], 1, stop_at_eos=False, record_logits=True).logits[0][0].float()
    with torch.no_grad():
        ref = hf(torch.tensor([ids], device=loaded.model.embed_tokens.weight.device)).logits[0, -1].float().cpu()
    diff, scale, agree = logit_agreement(ours, ref)
    return {"max_abs_logit_diff": diff, "max_abs_logit": scale, "same_argmax": agree == 1.0}


# ---------------------------------------------------------------- ours
def steps_per_row(s: Settings) -> int:
    return s.warmup_steps + s.timed_steps + s.pipelined_steps


def blocks_needed(s: Settings, batch: int, ctx: int) -> int:
    return batch * -(-(ctx + steps_per_row(s)) // BLOCK_SIZE)


def kv_capacity_bytes(s: Settings) -> int:
    if s.kv_capacity_bytes is not None:
        return s.kv_capacity_bytes
    free_cuda_memory()
    return max(0, torch.cuda.mem_get_info()[0] - int(s.reserve_gib * GIB))


def fill_store(store: PagedKVStore, gen: torch.Generator) -> None:
    """Random K/V everywhere (timing does not depend on values; no NaN/inf): N(0, 1) floats, or
    INT8 in [-127, 127] with scales in [0.01, 0.03]."""
    for t in (store.k, store.v):
        if store.spec.quantized:
            t.random_(-127, 128, generator=gen)
        else:
            t.normal_(0.0, 1.0, generator=gen)
    for t in (store.k_scale, store.v_scale):
        if t is not None:
            t.uniform_(0.01, 0.03, generator=gen)


def decode_row(runner: ModelRunner, store: PagedKVStore, loaded: LoadedModel, s: Settings,
               batch: int, ctx: int) -> dict:
    """Time decode steps of `batch` sequences with `ctx` cached tokens each."""
    device = torch.device(s.device)
    gen = torch.Generator().manual_seed(s.seed * 1_000_003 + batch * 100_003 + ctx)
    per_seq = -(-(ctx + steps_per_row(s)) // BLOCK_SIZE)
    tables = torch.randperm(store.num_blocks, generator=gen)[: batch * per_seq].view(batch, per_seq).tolist()
    tokens = torch.randint(0, loaded.config.vocab_size, (batch,), generator=gen).tolist()

    def inputs(toks: list[int], pos: int) -> list[StepInput]:
        """Each sequence's next token at position pos (pos cached before it); its block table holds
        the blocks up to that token, as the engine's would."""
        blk, off = divmod(pos, BLOCK_SIZE)
        return [StepInput([toks[b]], pos, [tables[b][blk] * BLOCK_SIZE + off], tables[b][: blk + 1], pos + 1)
                for b in range(batch)]

    timer = Stopwatch(device)
    step_ms, host_ms, first_ms = [], [], None
    for i in range(s.warmup_steps + s.timed_steps):
        t0 = time.perf_counter()
        batch_inputs = inputs(tokens, ctx + i)
        timer.start()
        logits = runner.run(batch_inputs)  # [B, vocab] float32
        next_ids = logits.argmax(dim=-1)
        timer.stop()
        tokens = next_ids.tolist()
        wall = (time.perf_counter() - t0) * 1e3
        first_ms = wall if i == 0 else first_ms
        if i >= s.warmup_steps:
            step_ms.append(timer.elapsed_ms())
            host_ms.append(wall)
    # Back to back, no token read back: the host may run ahead of the GPU if the runner lets it.
    pos0 = ctx + s.warmup_steps + s.timed_steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    timer.start()
    for j in range(s.pipelined_steps):
        runner.run(inputs(tokens, pos0 + j)).argmax(dim=-1)
    timer.stop()
    pipelined_ms = timer.elapsed_ms() / max(1, s.pipelined_steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    pipelined_host_ms = (time.perf_counter() - t0) * 1e3 / max(1, s.pipelined_steps)
    mean_seq_len = ctx + s.warmup_steps + (s.timed_steps - 1) / 2 + 1  # slots read, mean over timed steps
    check = {}
    if getattr(runner, "use_cuda_graphs", False):  # the graph replays what an eager step computes
        step_in = inputs(tokens, pos0 + max(s.pipelined_steps, 1) - 1)  # a position the table covers
        graph_logits = runner.run(step_in)
        eager_logits = ModelRunner(loaded.model, store, use_cuda_graphs=False).run(step_in)
        check = dict(zip(("graph_vs_eager_max_abs", "graph_vs_eager_max_logit", "graph_vs_eager_argmax_agree"),
                         logit_agreement(graph_logits, eager_logits)))
    step = statistics.median(step_ms)
    return {"step_ms": step, "step_ms_min": min(step_ms), "step_ms_max": max(step_ms), "host_ms": statistics.median(host_ms),
            "pipelined_ms": pipelined_ms, "pipelined_host_ms": pipelined_host_ms, "first_step_ms": first_ms,
            "tok_s": batch / step * 1e3, "host_tok_s": batch / statistics.median(host_ms) * 1e3,
            "steps_timed": len(step_ms), "mean_seq_len": mean_seq_len,
            "kv_bytes_read": batch * mean_seq_len * store.bytes_per_token, **check}


def ours_section(loaded: LoadedModel, kv: str, s: Settings, result: dict, save, deadline: float) -> None:
    cfg, name = loaded.config, loaded.config.name
    shape = KVShape(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim)
    block_bytes = BLOCK_SIZE * kv_bytes_per_token(shape, kv)
    # the floor gate rows first (context 2048), then the rest: what the budget cuts is least needed
    plan = sorted(((b, c) for b in s.batches for c in s.contexts), key=lambda bc: (bc[1] != 2048, -bc[0], bc[1]))

    def row(batch, ctx, **extra):
        r = {"model": name, "kv": kv, "batch": batch, "ctx": ctx, "block_size": BLOCK_SIZE,
             "blocks": blocks_needed(s, batch, ctx), "kv_bytes_per_token": kv_bytes_per_token(shape, kv), **extra}
        result["rows"].append(r)
        return r

    if time.time() > deadline:
        for b, c in plan:
            row(b, c, status="skipped (budget)")
        save(f"{name} {kv}: skipped (budget)")
        return
    capacity_blocks = kv_capacity_bytes(s) // block_bytes
    fits = [(b, c) for b, c in plan if blocks_needed(s, b, c) <= capacity_blocks]
    store = runner = None
    error = None
    try:
        if fits:
            num_blocks = max(blocks_needed(s, b, c) for b, c in fits) + 1
            t0 = time.time()
            store = PagedKVStore(cfg.num_layers, num_blocks, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim,
                                 dtype=kv, device=s.device)
            fill_store(store, torch.Generator(device=s.device).manual_seed(s.seed + 7))
            runner = ModelRunner(loaded.model, store, **s.runner_kwargs)
            result["stores"].append({"model": name, "kv": kv, "num_blocks": num_blocks,
                                     "bytes": num_blocks * block_bytes, "capacity_blocks": capacity_blocks,
                                     "alloc_fill_s": time.time() - t0,
                                     "use_cuda_graphs": getattr(runner, "use_cuda_graphs", None)})
    except Exception as e:  # the store itself failed: every row says so
        error = short_error(e)
        log(f"{name} {kv}: store/runner failed: {error}")
    for b, c in plan:
        need = blocks_needed(s, b, c)
        if need > capacity_blocks:
            row(b, c, status="does not fit", kv_need_gib=need * block_bytes / GIB,
                kv_capacity_gib=capacity_blocks * block_bytes / GIB)
        elif error:
            row(b, c, status="error", error=error)
        elif time.time() > deadline:
            row(b, c, status="skipped (budget)")
        else:
            try:
                r = row(b, c, status="ok", **decode_row(runner, store, loaded, s, b, c))
                log(f"  {name:14} kv={kv:5} B={b:<4} ctx={c:<5} step {r['step_ms']:9.3f} ms  host "
                    f"{r['host_ms']:9.3f} ms  pipelined {r['pipelined_ms']:9.3f} ms  first {r['first_step_ms']:9.1f} ms  "
                    f"{r['tok_s']:10.0f} tok/s")
            except Exception as e:
                row(b, c, status="oom" if is_oom(e) else "error", error=short_error(e))
                log(f"  {name} kv={kv} B={b} ctx={c}: {short_error(e)}")
                if is_oom(e):
                    free_cuda_memory()
        save(f"{name} kv={kv} B={b} ctx={c}")
    if runner is not None and result["stores"]:
        result["stores"][-1]["graphs_captured"] = len(getattr(runner, "_graphs", ()))
    del runner, store
    free_cuda_memory()


# ---------------------------------------------------------------- HF transformers
def hf_row(hf, loaded: LoadedModel, s: Settings, batch: int, ctx: int) -> dict:
    device = torch.device(s.device)
    gen = torch.Generator().manual_seed(s.seed + batch * 7919 + ctx)
    ids = torch.randint(0, loaded.config.vocab_size, (batch, ctx), generator=gen).to(device)  # [B, ctx]
    n = s.hf_new_tokens

    def timed(prompt: torch.Tensor, new: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                          min_new_tokens=new, do_sample=False, cache_implementation="static",
                          disable_compile=True, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert out.shape == (prompt.shape[0], prompt.shape[1] + new), f"HF generated {tuple(out.shape)}"
        return time.perf_counter() - t0

    # Warm-up at the full shape: a first call's one-time costs (kernel selection, lazy loads) would
    # otherwise land in T(1) and make HF's decode look faster than it is.
    t1_first = timed(ids, 1)
    t1 = timed(ids, 1)
    tn = timed(ids, 1 + n)
    ms_per_token = (tn - t1) / n * 1e3
    return {"t1_first_s": t1_first, "t1_s": t1, "t1n_s": tn, "new_tokens": n, "ms_per_token": ms_per_token,
            "tok_s": batch / ms_per_token * 1e3 if ms_per_token > 0 else None}


def hf_section(hf, loaded: LoadedModel, s: Settings, result: dict, save, deadline: float, hf_error) -> None:
    name = loaded.config.name
    batches = s.hf_batches.get(name, ())
    plan = sorted(((b, c) for b in batches for c in s.hf_contexts), key=lambda bc: (bc[1] != 2048, bc[0] < 16, bc))
    for b, c in plan:
        r = {"model": name, "batch": b, "ctx": c}
        if hf is None:
            r.update(status="error", error=hf_error or "no HF model")
        elif time.time() > deadline:
            r.update(status="skipped (budget)")
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    r.update(status="ok", **hf_row(hf, loaded, s, b, c))
                    log(f"  HF {name:14} B={b:<4} ctx={c:<5} {r['ms_per_token']:9.3f} ms/token  "
                        f"{r['tok_s'] or 0:10.0f} tok/s  (T1 {r['t1_s']:.2f} s, T1+{r['new_tokens']} {r['t1n_s']:.2f} s)")
                except Exception as e:
                    r.update(status="oom" if is_oom(e) else "error", error=short_error(e))
                    log(f"  HF {name} B={b} ctx={c}: {short_error(e)}")
            free_cuda_memory()
        result["hf"].append(r)
        save(f"HF {name} B={b} ctx={c}")


# ---------------------------------------------------------------- floors, gates, table
def finalize(result: dict, s: Settings) -> None:
    """Floors, HF ratios and gates from the rows so far (idempotent; run before every write)."""
    gbs = (result.get("copy") or {}).get("gb_per_s")
    hf = {(h["model"], h["batch"], h["ctx"]): h for h in result["hf"]}
    for r in result["rows"]:
        if r.get("status") != "ok":
            continue
        m = result["models"].get(r["model"], {})
        if gbs and "weight_bytes_read_fixed" in m:
            tied = m["tied_embeddings"]
            r["weight_bytes_read"] = m["weight_bytes_read_fixed"] + (0 if tied else r["batch"] * m["embedding_row_bytes"])
            r["floor_ms"] = (r["weight_bytes_read"] + r["kv_bytes_read"]) / gbs / 1e6
            r["x_floor"] = r["step_ms"] / r["floor_ms"]
            r["x_floor_host"] = r["host_ms"] / r["floor_ms"]
        h = hf.get((r["model"], r["batch"], r["ctx"]))
        if h and h.get("status") == "ok" and h.get("tok_s"):
            r["hf_tok_s"], r["x_hf"] = h["tok_s"], r["tok_s"] / h["tok_s"]
    gates = []
    for g in s.gates:
        rows = [r for r in result["rows"] if r["model"] == g["model"] and r["kv"] == s.dtype and
                (r["batch"] == g["batch"] and r["ctx"] == g["ctx"] if "batch" in g else r["batch"] >= g["min_batch"])]
        if "min_batch" in g:  # only rows HF ran beside
            rows = [r for r in rows if (r["model"], r["batch"], r["ctx"]) in hf]
        for r in rows:
            value = r.get(g["metric"])
            ok = None if value is None else (value <= g["max"] if "max" in g else value >= g["min"])
            gates.append({"gate": g["gate"], "model": r["model"], "kv": r["kv"], "batch": r["batch"], "ctx": r["ctx"],
                          "value": value, "bound": g.get("max", g.get("min")), "pass": ok,
                          **({} if ok is not None else {"why": f"row {r.get('status')}, HF "
                              f"{hf.get((r['model'], r['batch'], r['ctx']), {}).get('status')}"})})
        if not rows:
            gates.append({"gate": g["gate"], "model": g["model"], "pass": None, "why": "row not run"})
    result["gates"] = gates
    for r in result["rows"]:
        r["gates"] = {g["gate"]: g["pass"] for g in gates if (g.get("batch"), g.get("ctx"), g["model"], g.get("kv")) ==
                      (r["batch"], r["ctx"], r["model"], r["kv"])}


def table(result: dict, s: Settings) -> str:
    copy = result.get("copy") or {}
    lines = [f"{result['device']}  copy {copy.get('gb_per_s', 0):.0f} GB/s (read+write); weights {s.dtype}; "
             f"step = median CUDA-event time of run()+argmax, host = whole step wall time",
             f"{'model':14} {'kv':5} {'batch':>5} {'ctx':>5} | {'step ms':>8} {'host ms':>8} {'tok/s':>9} | "
             f"{'floor ms':>8} {'x floor':>7} | {'HF tok/s':>9} {'x HF':>6} | pass/miss"]
    order = {m: i for i, m in enumerate(s.models)}
    kv_order = {k: i for i, k in enumerate(s.kv_dtypes)}
    rows = sorted(result["rows"], key=lambda r: (order.get(r["model"], 99), kv_order.get(r["kv"], 9), r["batch"], r["ctx"]))
    f = lambda r, k, fmt: format(r[k], fmt) if r.get(k) is not None else "-"  # noqa: E731
    for r in rows:
        head = f"{r['model']:14} {r['kv']:5} {r['batch']:>5} {r['ctx']:>5} | "
        if r.get("status") != "ok":
            lines.append(head + f"{r.get('status')}" + (f": {r['error'][:100]}" if r.get("error") else "") +
                         (f" (needs {r['kv_need_gib']:.1f} GiB KV, {r['kv_capacity_gib']:.1f} free)"
                          if "kv_need_gib" in r else ""))
            continue
        verdict = ", ".join(f"{'pass' if ok else 'MISS' if ok is False else 'n/a'} {g}" for g, ok in r["gates"].items())
        lines.append(head + f"{f(r, 'step_ms', '8.3f'):>8} {f(r, 'host_ms', '8.3f'):>8} {f(r, 'tok_s', '9.0f'):>9} | "
                     f"{f(r, 'floor_ms', '8.3f'):>8} {f(r, 'x_floor', '7.2f'):>7} | {f(r, 'hf_tok_s', '9.0f'):>9} "
                     f"{f(r, 'x_hf', '6.2f'):>6} | {verdict or '-'}")
    for h in result["hf"]:
        if h.get("status") != "ok":
            lines.append(f"HF {h['model']} B={h['batch']} ctx={h['ctx']}: {h.get('status')} {h.get('error', '')[:120]}")
    done = [g for g in result["gates"] if g["pass"] is not None]
    lines.append(f"gates: {sum(g['pass'] for g in done)}/{len(done)} pass" +
                 "".join(f"\n  MISS {g['gate']} {g['model']} B={g['batch']} ctx={g['ctx']}: {g['value']:.2f}"
                         for g in done if not g["pass"]) +
                 "".join(f"\n  not judged: {g['gate']} {g['model']} {g.get('batch', '')} {g.get('ctx', '')}: {g.get('why')}"
                         for g in result["gates"] if g["pass"] is None))
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def run(s: Settings) -> dict:
    start = time.time()
    device = torch.device(s.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test)"
    tag = "smoke" if s.smoke else next((g for g in ("h100", "h200", "a100", "l40s") if g in name.lower()), "gpu")
    path = os.path.join(s.out, f"engine_{tag}.json")
    result = {"benchmark": "engine", **environment(), "device": name, "gpu_tag": tag, "cuda": torch.version.cuda,
              "settings": {k: v for k, v in asdict(s).items()},
              "notes": [f"weights and activations in {s.dtype}; the float KV rows store {s.dtype} (the model's dtype: "
                        "the issue's 'fp16 KV' rows, same bytes per element)",
                        "step_ms: median CUDA-event time from just before ModelRunner.run to after the greedy argmax, "
                        "what the compute backend charges a step; host_ms: perf_counter over the whole step "
                        "(building StepInputs, run, argmax, reading the tokens back)",
                        "floor_ms: (weight bytes read + KV bytes read, INT8 scales included) / copy bandwidth; an untied "
                        "embedding table counts only the batch's rows; KV read = batch x mean slots read per timed step",
                        "HF: generate(do_sample=False, cache_implementation='static', disable_compile=True, "
                        "min_new_tokens=max_new_tokens), ms/token = (T(1+N) - T(1)) / N after one warm-up T(1), weights shared "
                        "with ours; x_hf on "
                        "INT8 rows compares with HF's float static cache (the gates use the float rows only)",
                        "positions past a model's max_position_embeddings (smollm2 at 8192 + decode steps) use RoPE "
                        "extended past the trained length: speed only"],
              "copy": None, "models": {}, "stores": [], "rows": [], "hf": [], "gates": []}
    try:
        import transformers

        result["transformers"] = transformers.__version__
    except ImportError:
        result["transformers"] = None

    def save(stage: str) -> None:
        result["elapsed_s"] = time.time() - start
        try:
            finalize(result, s)
        except Exception as e:  # never lose the rows to a bug in the summary
            result["finalize_error"] = short_error(e)
        write_json(Path(path), result)
        log(f"[{time.time() - start:6.1f} s] {stage} -> {path}")

    try:
        result["copy"] = copy_bandwidth(device, s.copy_bytes)
    except Exception as e:
        result["copy_error"] = short_error(e)
    save(f"copy bandwidth {(result['copy'] or {}).get('gb_per_s', 0):.0f} GB/s")
    for model_name in s.models:
        ours_end, hf_end = (start + f * s.budget_s for f in s.section_ends.get(model_name, (1.0, 1.0)))
        info = result["models"].setdefault(model_name, {})
        loaded = hf = None
        hf_error = None
        if time.time() > ours_end:
            info["status"] = "skipped (budget)"
        else:
            try:
                t0 = time.time()
                loaded = load(model_name, s)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                info.update(status="ok", load_s=time.time() - t0, source=loaded.source,
                            config={k: v for k, v in asdict(loaded.config).items() if k != "extra"},
                            num_params=loaded.config.num_params, **weight_info(loaded.model))
                # Decode runs past the trained length at the longest context (speed only).
                loaded.model.max_positions = max(loaded.model.max_positions, max(s.contexts) + steps_per_row(s) + 1)
            except Exception as e:
                info.update(status="error", error=short_error(e))
            save(f"{model_name} loaded ({info.get('status')}, {info.get('load_s', 0):.1f} s)")
        if loaded is not None and s.hf_batches.get(model_name):
            try:
                t0 = time.time()
                hf, hf_info = hf_twin(loaded)
                info["hf"] = {**hf_info, "build_s": time.time() - t0, "compile": "generate(disable_compile=True)"}
                info["hf_check"] = hf_check(loaded, hf)
            except Exception as e:
                hf_error = short_error(e)
                info.setdefault("hf", {})["error"] = hf_error
                log(f"{model_name}: HF twin failed: {hf_error}")
            save(f"{model_name} HF twin {info.get('hf_check')}")
        for kv in s.kv_dtypes:
            if loaded is None:
                for b in s.batches:
                    for c in s.contexts:
                        result["rows"].append({"model": model_name, "kv": kv, "batch": b, "ctx": c,
                                               "status": info.get("status", "error"), "error": info.get("error")})
                continue
            try:
                ours_section(loaded, kv, s, result, save, ours_end)
            except Exception as e:  # a bug between rows: record it, go on with the next section
                result.setdefault("section_errors", []).append(f"{model_name} {kv}: {short_error(e)}")
                free_cuda_memory()
        if loaded is not None:
            try:
                hf_section(hf, loaded, s, result, save, hf_end, hf_error)
            except Exception as e:
                result.setdefault("section_errors", []).append(f"{model_name} HF: {short_error(e)}")
        del hf, loaded
        free_cuda_memory()
    save("done")
    log(table(result, s))
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda text: tuple(int(x) for x in text.split(",") if x)  # noqa: E731
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    p.add_argument("--budget-s", type=float, default=300.0, help="rows after this many seconds are skipped")
    p.add_argument("--smoke", action="store_true", help="tiny random models on the CPU, to test this script")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="weights and the float KV rows")
    p.add_argument("--models", default="smollm2-135m,llama-3.1-8b")
    p.add_argument("--batches", type=ints, default=(1, 16, 64, 256))
    p.add_argument("--contexts", type=ints, default=(512, 2048, 8192))
    p.add_argument("--kv-dtypes", default="", help="default: the model's dtype and int8")
    p.add_argument("--hf-contexts", type=ints, default=(512, 2048))
    p.add_argument("--hf-batches", type=ints, default=None, help="for every model (default: 1,16,64,256 for "
                   "smollm2-135m, 1,16,64 for llama-3.1-8b); empty = no HF")
    p.add_argument("--steps", type=int, default=24, help="timed decode steps per row")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--hf-new-tokens", type=int, default=32)
    p.add_argument("--reserve-gib", type=float, default=4.0)
    p.add_argument("--runner-kwargs", type=json.loads, default={}, help="JSON keyword arguments for ModelRunner")
    a = p.parse_args(argv)
    if a.smoke:
        s = smoke_settings(a.out)
        s.budget_s = a.budget_s
    else:
        s = Settings(dtype=a.dtype, models=tuple(a.models.split(",")), batches=a.batches, contexts=a.contexts,
                     kv_dtypes=tuple(x for x in a.kv_dtypes.split(",") if x), hf_contexts=a.hf_contexts,
                     timed_steps=a.steps, warmup_steps=a.warmup, hf_new_tokens=a.hf_new_tokens,
                     budget_s=a.budget_s, reserve_gib=a.reserve_gib, runner_kwargs=a.runner_kwargs, out=a.out)
        if a.hf_batches is not None:
            s.hf_batches = {m: a.hf_batches for m in s.models}
    return run(s)


if __name__ == "__main__":
    main()
