"""Measure the cost model's tables on this GPU: whole decode, prefill and mixed steps as compute
mode runs them (batch x context, per KV dtype), and the ops inside them (the layers' GEMMs, the
decode kernel, prefill attention, the cache write, LM head + sampling, copies and the host link).
Then, per KV dtype, it serves 300 requests of the package's trace (rows 750-1050) in compute mode (full,
StreamingLLM, H2O; kvsim/profile_serving.py) and keeps their steps as fitting rows beside the seeded
random compositions (--serving-requests 0: none; not interrupted by the budget, which keeps
SERVING_RESERVE_S a dtype for it).
Writes a profile file (JSON: GPU, date, library versions, model shape, tables) that the analytic
and compute simulations use for this (model, GPU) instead of the roofline once it is shipped in
engine/profiles/ or named in $KVSIM_PROFILES. Weights are random: timing does not depend on them.
--budget-s (300 s) stops adding points and still writes the file; --quick measures about a third."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError, KvsimError
from engine.gpus import GPUS
from kvsim.config import opt

NAME = "profile"
HELP = "measure step and op times on a GPU over a grid; write the cost model's profile file"
DEFAULTS: dict = {}
PROFILE_KV_DTYPES = ("fp32", "fp16", "bf16", "int8", "fp8")  # what the attention kernels read

_GRID = "override the grid's "
SERVING_RESERVE_S = 50.0  # what the serving runs of one KV dtype take on an H100 (SmolLM2-135M, 300 requests x 3;
# two took 34-35 s on 2026-12-06 12:35, three 40-44 s at 13:56)


@dataclass(frozen=True)
class Config:
    model: str = opt("smollm2-135m", "model preset, HF config.json, .gguf or checkpoint dir (its shape)",
                     metavar="SHAPE")
    kv_dtypes: tuple[str, ...] = opt(("fp16", "int8"), "KV dtypes to profile", choices=PROFILE_KV_DTYPES)
    out: str | None = opt(None, "profile file to write (none: ./<model>_<gpu>.json)", metavar="PATH")
    quick: bool = opt(False, "a coarser grid: about a third of the points")
    budget_s: float = opt(300.0, "stop adding points after this many seconds (what was measured is written; the "
                                 f"serving runs keep {SERVING_RESERVE_S:.0f} s a KV dtype of it)")
    allow_cpu: bool = opt(False, "without a CUDA GPU, time the CPU with perf_counter (tests only: CPU times "
                                 "say nothing about a GPU)")
    gpu: str | None = opt(None, "GPU preset the file is for (none: the GPU found; required with --allow-cpu)",
                          choices=tuple(GPUS))
    block_size: int = opt(16, "tokens per KV block (as the simulation's --block-size)")
    scatter_gib: float = opt(0.0, "take every step's blocks from this much KV memory in a seeded random order, "
                                  "as a serving engine's tables look after sequences came and went (0: in order)",
                             metavar="GIB")
    serving_requests: int | None = opt(None, "serve this many requests of the trace in compute mode per KV dtype "
                                              "(full, StreamingLLM, H2O) and fit their steps too (none: 300 on a GPU, 0 on "
                                              "the CPU; 0: none)", metavar="N")
    serving_trace: str | None = opt(None, "the trace those requests come from (none: the package's, the Azure "
                                          "2023 conversation trace's first 2,000 rows)", metavar="PATH")
    serving_offset: int | None = opt(None, "serve from this row of that trace (none: 750 of the package's trace, "
                                           "0 of another)", metavar="ROW")
    batches: tuple[int, ...] | None = opt(None, _GRID + "decode batch sizes", metavar="N[,N]")
    contexts: tuple[int, ...] | None = opt(None, _GRID + "decode context lengths (tokens)", metavar="N[,N]")
    prefill_tokens: tuple[int, ...] | None = opt(None, _GRID + "prefill chunk sizes (tokens)", metavar="N[,N]")
    prefill_cached: tuple[int, ...] | None = opt(None, _GRID + "cached tokens before a prefill chunk",
                                                 metavar="N[,N]")
    random_steps: int | None = opt(None, "seeded random compositions timed a kind of step, decode-only and with "
                                          "prefill (none: 400, --quick 60; fewer leave a large model's time to the "
                                          "scored ones)", metavar="N")
    scored_steps: int | None = opt(None, "seeded random compositions keeping attention scores a kind (none: 80, "
                                          "--quick 30)", metavar="N")
    warmup: int | None = opt(None, "runs before timing each point (none: 2)", metavar="N")
    reps: int | None = opt(None, "timed runs per point, their median kept (none: 5, --quick 3)", metavar="N")

    def __post_init__(self):
        for name in ("batches", "contexts", "prefill_tokens", "block_size", "reps"):
            value = getattr(self, name)
            if value is not None and min(value if isinstance(value, tuple) else (value,)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
        if self.prefill_cached is not None and (min(self.prefill_cached) < 0 or 0 not in self.prefill_cached):
            raise ConfigError(f"--prefill-cached: values >= 0, 0 among them (chunks with nothing cached are the "
                              f"cost model's base), got {self.prefill_cached}")
        for name in ("warmup", "random_steps", "scored_steps", "serving_requests", "serving_offset"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0, got {value}")
        if not self.scatter_gib >= 0:
            raise ConfigError(f"--scatter-gib: must be >= 0, got {self.scatter_gib}")
        if self.serving_trace is not None and not Path(self.serving_trace).is_file():
            raise ConfigError(f"--serving-trace {self.serving_trace}: no such file")
        if not self.budget_s > 0:
            raise ConfigError(f"--budget-s: must be > 0, got {self.budget_s}")


def grid_of(config: Config):
    import dataclasses

    from engine.profile import QUICK, ProfileGrid

    grid = QUICK if config.quick else ProfileGrid()
    changes = {name: getattr(config, name) for name in ("batches", "contexts", "prefill_tokens", "prefill_cached",
                                                        "warmup", "reps", "random_steps", "scored_steps")
               if getattr(config, name) is not None}
    return dataclasses.replace(grid, **changes)


def model_shape(name: str):
    """A preset, an HF config.json (shape only), or whatever engine.loader reads."""
    if name.endswith(".json"):
        import json

        from engine.config import config_from_hf

        path = Path(name)
        if not path.is_file():
            raise KvsimError(f"--model {path}: no such file")
        return config_from_hf(json.loads(path.read_text()), path.stem, str(path))
    from kvsim.simulate import model_config

    return model_config(name)


def device_and_gpu(config: Config):
    import torch

    from engine.gpus import get_gpu

    if torch.cuda.is_available():
        found = get_gpu(torch.cuda.get_device_name()).name
        if config.gpu not in (None, found):
            raise ConfigError(f"--gpu {config.gpu}: this machine's GPU is {torch.cuda.get_device_name()} ({found})")
        return torch.device("cuda"), found
    if not config.allow_cpu:
        raise KvsimError("kvsim profile measures a GPU and no CUDA GPU is present; --allow-cpu times the CPU "
                         "instead (for tests: those numbers say nothing about a GPU)")
    if config.gpu is None:
        raise ConfigError("--gpu: name the GPU preset a CPU-timed test profile stands in for (e.g. --gpu h100)")
    return torch.device("cpu"), config.gpu


def compact_json(value) -> str:
    """Indented JSON with each list of numbers on one line (a table column reads as a row)."""
    import json
    import re

    text = json.dumps(value, indent=1, allow_nan=False)
    return re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def run(config: Config, argv: list[str]) -> int:
    start = time.perf_counter()
    import torch

    from engine.loader import random_model
    from engine.profile import Timer
    from engine.profile_run import header, measure_kv_dtype, measure_memory
    from kvsim.compute import model_dtype
    from kvsim.profile_serving import (SERVING_REQUESTS, serving_offset, serving_settings, serving_tables,
                                       serving_window)

    device, gpu = device_and_gpu(config)
    cfg, grid = model_shape(config.model), grid_of(config)
    out = Path(config.out) if config.out else Path(f"{cfg.name}_{gpu}.json")
    log = lambda message: print(message, file=sys.stderr, flush=True)
    profile = header(cfg, gpu, device, config.block_size, grid, config.quick, config.budget_s, argv,
                     config.scatter_gib)

    def write() -> None:
        profile["settings"]["elapsed_s"] = round(time.perf_counter() - start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(compact_json(profile) + "\n")
        tmp.replace(out)

    serving = config.serving_requests if config.serving_requests is not None else (
        SERVING_REQUESTS if device.type == "cuda" else 0)
    reserve_s = SERVING_RESERVE_S if serving else 0.0  # kept from each dtype's tables for its serving runs
    offset = serving_offset(config.serving_trace, config.serving_offset)
    window = None
    if serving:  # the trace read once; a row past it refused now, not after the grid
        window = serving_window(config.serving_trace, offset)
        profile["settings"]["serving_steps"] = serving_settings(serving, config.serving_trace, offset)

    def serve(profile: dict, kv: str) -> None:
        began = time.perf_counter()
        try:
            tables, notes = serving_tables(config.model, gpu, kv, config.block_size, profile["settings"]["graph"],
                                           serving, config.serving_trace, window)
        except Exception as e:  # noqa: BLE001 - the grid's tables are kept; the fit does without serving rows
            profile["kv_dtypes"][kv]["errors"].append(f"serving steps: {type(e).__name__}: {e}")
            log(f"  serving steps failed ({type(e).__name__}: {e}); the profile keeps its other tables")
            return
        profile["kv_dtypes"][kv]["tables"].update(tables)
        profile["kv_dtypes"][kv]["serving"] = notes
        counts = ", ".join(f"{policy} {note['steps']} steps" for runs in notes.values() for policy, note in runs.items())
        log(f"  serving: {counts} ({serving} requests each) in {time.perf_counter() - began:.1f} s")

    log(f"profiling {cfg.name} on {profile['device_name']} as {gpu}: KV {', '.join(config.kv_dtypes)}, "
        f"budget {config.budget_s:.0f} s")
    model, model_key = None, None
    for i, kv in enumerate(config.kv_dtypes, 1):
        dtype = model_dtype(kv)
        if model_key != dtype:  # one model in memory at a time
            model = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            model, model_key = random_model(cfg, device=device, dtype=dtype), dtype
        share = start + config.budget_s * i / len(config.kv_dtypes)  # what one dtype leaves, the next may use
        profile["kv_dtypes"][kv] = measure_kv_dtype(model, kv, grid, config.block_size, share - reserve_s, log,
                                                     config.scatter_gib)
        if serving:
            serve(profile, kv)
        write()
    with torch.inference_mode():
        profile["memory"] = measure_memory(device, Timer(device, grid.warmup, grid.reps))
    write()
    from engine.calibrated import consistency
    from engine.cost_model import cost_model_for
    from engine.gpus import get_gpu
    from engine.profile_file import load_profile

    done = load_profile(out)
    for kv in config.kv_dtypes:
        missing = done.missing(kv)
        state = f"lacks {', '.join(missing)}: the roofline stays in use" if missing else "calibrated"
        log(f"{kv}: {state}")
        if not missing:
            checks, warnings = consistency(cost_model_for(cfg, get_gpu(gpu), kv, profile=out))
            log(f"  {checks}")
            for warning in warnings:
                log(f"  warning: {warning}")
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s; to ship it, copy it to engine/profiles/ "
          f"(or name it in $KVSIM_PROFILES)")
    return 0
