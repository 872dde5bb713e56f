"""Does a step take longer once the GPU has been busy a while, and do an evicting policy's batches
cost more than the uniform grid batch beside them?

The profile measures its decode grid first, on a GPU that has just come out of idle, and its random
steps a minute later; compute mode runs a trace for tens of seconds without pause. This bench times
the same steps (as compute mode times a step: CUDA events around the graph replay and sampling) in
four states: cold (first thing after capture), hot (right after --load-s seconds of back-to-back
mixed steps of --step-tokens tokens), after --idle-s seconds of idling, and hot again; with the SM clock, the
temperature, the power and the active clock-throttle reasons that nvidia-smi reports at each.
The steps: uniform decode batches (the profile's grid), "capped" batches (contexts lognormal about
the cap, none above it: what StreamingLLM or H2O keep, most rows at the cap) of the same rows and
cap, and one mixed step. Prints a table and writes $OUT/warm_state_<gpu>.json (or --out).

    python -m bench.warm_state [--model smollm2-135m] [--kv-dtype fp16] [--load-s 30]
    python -m bench.warm_state --device cpu --load-s 1 --idle-s 0 --reps 1 --points 4x64 --mixed 4x64 --step-tokens 32   # smoke
"""

from __future__ import annotations

import argparse
import subprocess
import time

import numpy as np
import torch

from bench.common import environment, random_weights_model, write_result
from engine.gpus import get_gpu
from engine.profile import StepBench, Timer

STATES = ("cold", "hot", "idled", "hot_again")
SMI_FIELDS = "clocks.sm,clocks.mem,temperature.gpu,power.draw,clocks_throttle_reasons.active"


def gpu_state() -> dict:
    """nvidia-smi's view now (empty where it cannot answer, e.g. on the CPU)."""
    try:
        line = subprocess.run(["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return {}
    return dict(zip(SMI_FIELDS.split(","), (v.strip() for v in line.split(","))))


def capped(rows: int, cap: int, seed: int) -> list[int]:
    """rows contexts lognormal (sigma 0.5) about the cap, none above it (most rows at the cap)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(cap * rng.lognormal(0.0, 0.5, rows)), 16, cap).astype(int).tolist()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kv-dtype", default="fp16")
    ap.add_argument("--points", default="64x128,128x512,256x512,128x1024", help="ROWSxCONTEXT decode batches")
    ap.add_argument("--mixed", default="128x512", help="ROWSxCONTEXT decode rows of the mixed (load) step, "
                    "beside one chunk filling --step-tokens")
    ap.add_argument("--step-tokens", type=int, default=2048, help="the mixed step's tokens (a scheduler's budget)")
    ap.add_argument("--load-s", type=float, default=30.0)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device, loaded = random_weights_model(a.model, a.device)
    points = [tuple(int(x) for x in p.split("x")) for p in a.points.split(",")]
    steps = {}  # name -> (seq_lens, new tokens)
    for b, c in points:
        steps[f"uniform {b}x{c}"] = [c] * b, [1] * b
        lens = capped(b, c, a.seed + b)
        steps[f"capped {b}x{c} (mean {np.mean(lens):.0f})"] = lens, [1] * b
    mb, mc = (int(x) for x in a.mixed.split("x"))
    chunk = a.step_tokens - mb
    if chunk < 1:
        raise SystemExit(f"warm_state: --step-tokens {a.step_tokens} leaves no chunk beside {mb} decode rows")
    mixed = f"mixed {mb}x{mc} + {chunk}"
    steps[mixed] = [chunk] + [mc] * mb, [chunk] + [1] * mb
    need = max(sum(-(-n // 16) for n in lens) for lens, _ in steps.values())
    bench = StepBench(loaded.model, a.kv_dtype, 16, want_blocks=need)
    if bench.num_blocks < need:
        raise SystemExit(f"warm_state: the largest step needs {need} blocks, the store holds {bench.num_blocks}")
    timer = Timer(device, warmup=2, reps=a.reps)
    timed = {name: bench.step(bench.inputs(lens, new)) for name, (lens, new) in steps.items()}
    for step in timed.values():
        step(), step()  # captures its graph, warms it
    load = timed[mixed]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def measure() -> dict:
        return {name: float(np.median(timer.times(step))) for name, step in timed.items()}

    def busy(seconds: float) -> int:
        end, n = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            load()
            n += 1
        sync()
        return n

    result = {"benchmark": "warm_state", **environment(), "model": a.model, "kv_dtype": a.kv_dtype,
              "weights": "random", "reps": a.reps, "load_s": a.load_s, "idle_s": a.idle_s, "states": {}}
    for state in STATES:
        if state.startswith("hot"):
            result[f"{state}_load_steps"] = busy(a.load_s)
        elif state == "idled":
            time.sleep(a.idle_s)
        smi = gpu_state()
        result["states"][state] = {"gpu": smi, "step_s": measure(), "gpu_after": gpu_state()}
        print(f"{state:>9s}: nvidia-smi {smi}", flush=True)
    cold = result["states"]["cold"]["step_s"]
    print(f"{'step':>30s} " + " ".join(f"{s + ' ms':>12s}" for s in STATES) + f" {'hot/cold':>9s}")
    for name in timed:
        ms = [1e3 * result["states"][s]["step_s"][name] for s in STATES]
        print(f"{name:>30s} " + " ".join(f"{m:12.3f}" for m in ms)
              + f" {100 * (result['states']['hot']['step_s'][name] / cold[name] - 1):+8.1f}%")
    for b, c in points:
        u, cap = f"uniform {b}x{c}", next(n for n in timed if n.startswith(f"capped {b}x{c} "))
        ratios = [result["states"][s]["step_s"][cap] / result["states"][s]["step_s"][u] - 1 for s in STATES]
        print(f"{cap} / {u} - 1: " + ", ".join(f"{s} {100 * r:+.1f}%" for s, r in zip(STATES, ratios)))
    gpu = get_gpu(torch.cuda.get_device_name(device)).name if device.type == "cuda" else "cpu"
    write_result(a.out, f"warm_state_{gpu}.json", result)
    return result


if __name__ == "__main__":
    main()
