"""What attention-score tracking (H2O, TOVA, SnapKV) costs a decode step on the GPU, end to end.

    PYTHONPATH=. python3 bench/score_cost.py [--model smollm2-135m] [--out DIR]

Per (KV dtype, batch, context): the median CUDA-event time of a decode step through
ModelRunner + greedy sampling, without scores and with them, where "with" is what the compute
backend does for a score-tracking policy: per-layer score buffers zeroed, the decode kernel's
score_out, and the fold of all layers and KV heads into one row per sequence copied to the host
(engine/backends/compute.py `_update_scores`, before its per-sequence numpy work). Weights are
seeded random (timing does not depend on them); the cache holds random K/V. Writes
score_cost_<gpu>.json to --out (default $OUT, else bench/results).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]

import torch  # noqa: E402

from bench.common import environment, write_json  # noqa: E402
from bench.engine import fill_store  # noqa: E402
from engine.loader import load_model  # noqa: E402
from engine.profile import Stopwatch  # noqa: E402
from engine.runner import ModelRunner, StepInput  # noqa: E402
from kvcache.kv_store import PagedKVStore  # noqa: E402

BLOCK = 16


def time_steps(runner, batch_inputs, scores: bool, cfg, steps: int) -> float:
    timer, times = Stopwatch(torch.device("cuda")), []
    max_slots = max(len(s.block_table) for s in batch_inputs) * BLOCK
    for i in range(steps + 3):
        timer.start()
        score_out = ([torch.zeros(len(batch_inputs), cfg.num_kv_heads, max_slots, device="cuda")
                      for _ in range(cfg.num_layers)] if scores else None)
        logits = runner.run(batch_inputs, score_out)
        logits.argmax(-1).tolist()
        if scores:
            torch.stack(score_out).sum(dim=(0, 2)).double().cpu()
        timer.stop()
        if i >= 3:
            times.append(timer.elapsed_ms())
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batches", default="16,64,256")
    p.add_argument("--contexts", default="512,2048")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    args = p.parse_args()
    loaded = load_model(args.model, device="cuda", dtype=torch.float16, random_weights=True)
    cfg = loaded.config
    batches = [int(x) for x in args.batches.split(",")]
    contexts = [int(x) for x in args.contexts.split(",")]
    per_seq = -(-(max(contexts) + 1) // BLOCK)
    rows = []
    for kv in ("fp16", "int8"):
        store = PagedKVStore(cfg.num_layers, max(batches) * per_seq + 1, BLOCK, cfg.num_kv_heads, cfg.head_dim,
                             dtype=kv, device="cuda")
        fill_store(store, torch.Generator(device="cuda").manual_seed(0))
        runner = ModelRunner(loaded.model, store)
        gen = torch.Generator().manual_seed(1)
        for b in batches:
            tables = torch.randperm(store.num_blocks, generator=gen)[: b * per_seq].view(b, per_seq).tolist()
            for ctx in contexts:
                blk, off = divmod(ctx, BLOCK)
                step = [StepInput([1], ctx, [tables[i][blk] * BLOCK + off], tables[i][: blk + 1], ctx + 1)
                        for i in range(b)]
                plain = time_steps(runner, step, False, cfg, args.steps)
                scored = time_steps(runner, step, True, cfg, args.steps)
                rows.append({"kv": kv, "batch": b, "ctx": ctx, "plain_ms": plain, "scores_ms": scored,
                             "ratio": scored / plain})
                print(f"{args.model} kv={kv:5} B={b:<4} ctx={ctx:<5} plain {plain:7.3f} ms  with scores "
                      f"{scored:7.3f} ms  x{scored / plain:.2f}", flush=True)
        del runner, store
        torch.cuda.empty_cache()
    gpu = torch.cuda.get_device_name().lower()
    tag = "h100" if "h100" in gpu else "h200" if "h200" in gpu else "gpu"
    write_json(Path(args.out) / f"score_cost_{tag}.json",
               {"benchmark": "score_cost", **environment(), "model": args.model, "weights": "random (seeded)",
                "block_size": BLOCK, "steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
