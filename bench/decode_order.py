"""Does it matter where the longest sequence sits in a decode batch?

The decode kernel's grid is (rows, KV heads, splits), launched row by row. Once the rows alone
fill the GPU it does not split, and one long sequence is one program's serial walk: if that
program starts first, the others' bytes overlap its walk (the step takes the larger of the two);
if it starts last, they add up. The cost model's structural sum assumes the first; its random
fit steps put the long sequence anywhere; serving puts the oldest sequences first. This bench
times the same decode step (one long sequence among short ones, seeded) with the long one first,
in the middle and last, as compute mode times a step (CUDA events around runner.run and sampling,
CUDA graphs), beside the calibrated cost model's prediction. A fourth timing keeps the long one
first but takes every row's blocks in a seeded random order over a store as large as a serving
run's (--pool-gib, fidelity's default KV memory) instead of in order, as the profile does: whether
a run's scattered tables (blocks freed and reused by many sequences) cost the kernel time. Prints
a table and writes $OUT/decode_order_<gpu>.json (or --out).

    python -m bench.decode_order [--model smollm2-135m] [--kv-dtype fp16] [--reps 15]
    python -m bench.decode_order --device cpu --batches 3 --long 64 --short 16 --reps 1   # smoke
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.common import environment, random_weights_model, write_result
from engine.cost_model import StepShape, cost_model_for
from engine.gpus import get_gpu
from engine.profile import StepBench, Timer
from kvcache.sizing import kv_bytes_per_block

PLACES = ("first", "middle", "last")


def contexts(batch: int, long: int, short: int, seed: int) -> list[int]:
    """One sequence of `long` tokens and batch - 1 of about `short` (lognormal, seeded)."""
    rng = np.random.default_rng(seed)
    rest = np.clip(np.round(short * rng.lognormal(0.0, 0.5, batch - 1)), 16, long).astype(int).tolist()
    return [long, *rest]


def placed(seq_lens: list[int], where: str) -> list[int]:
    """The same lengths with the first (the long one) moved to `where`."""
    long, rest = seq_lens[0], seq_lens[1:]
    at = {"first": 0, "middle": len(rest) // 2, "last": len(rest)}[where]
    return rest[:at] + [long] + rest[at:]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--kv-dtype", default="fp16")
    ap.add_argument("--batches", default="64,96,128,192,256", help="decode rows per step")
    ap.add_argument("--long", type=int, default=8192)
    ap.add_argument("--short", type=int, default=1500, help="median context of the other rows")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-gib", type=float, default=4.0, help="the store's size, as a serving run's KV memory")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    device, loaded = random_weights_model(a.model, a.device)
    batches = [int(b) for b in a.batches.split(",")]
    lengths = {b: contexts(b, a.long, a.short, a.seed + b) for b in batches}
    need = sum(-(-n // 16) for n in max(lengths.values(), key=sum))
    pool = int(a.pool_gib * 2**30 // kv_bytes_per_block(loaded.config, a.kv_dtype, 16))
    bench = StepBench(loaded.model, a.kv_dtype, 16, want_blocks=max(need, pool))
    scattered = bench.scattered(a.seed)
    gpu = get_gpu(torch.cuda.get_device_name(device)).name if device.type == "cuda" else "h100"
    cost = cost_model_for(loaded.config, get_gpu(gpu), a.kv_dtype)
    timer, rows = Timer(device, warmup=2, reps=a.reps), []
    print(f"store: {bench.num_blocks} blocks of 16 tokens")
    print(f"{'rows':>5s} {'long':>6s} {'mean':>7s} " + " ".join(f"{p + ' ms':>10s}" for p in PLACES)
          + f" {'last/first':>10s} {'scattered':>10s} {'model ms':>9s}")
    for b, seq_lens in lengths.items():
        if not bench.fits(seq_lens):
            print(f"{b:5d}: does not fit the store; skipped")
            continue
        times = {}
        for where, pool in [(p, None) for p in PLACES] + [("scattered", scattered)]:
            step = bench.step(bench.inputs(placed(seq_lens, "first" if pool else where), [1] * b, pool=pool))
            step(), step()  # captures its graph, warms
            times[where] = float(np.median(timer.times(step)))
        shape = StepShape(b, b, sum(seq_lens), num_decode_seqs=b, decode_max_context=max(seq_lens))
        model = cost.step_time(shape)
        rows.append({"rows": b, "long": a.long, "mean_context": sum(seq_lens) / b,
                     **{f"{p}_s": t for p, t in times.items()}, "last_vs_first": times["last"] / times["first"] - 1,
                     "scattered_vs_first": times["scattered"] / times["first"] - 1,
                     "model_s": model, "cost_model": cost.source})
        print(f"{b:5d} {a.long:6d} {sum(seq_lens) / b:7.0f} " + " ".join(f"{1e3 * times[p]:10.3f}" for p in PLACES)
              + f" {100 * rows[-1]['last_vs_first']:+9.1f}% {100 * rows[-1]['scattered_vs_first']:+9.1f}%"
              + f" {1e3 * model:9.3f}")
    result = {"benchmark": "decode_order", **environment(), "model": a.model, "kv_dtype": a.kv_dtype,
              "weights": "random", "reps": a.reps, "seed": a.seed, "store_blocks": bench.num_blocks, "rows": rows}
    write_result(a.out, f"decode_order_{gpu}.json", result)
    return result


if __name__ == "__main__":
    main()
