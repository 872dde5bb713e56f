"""Do the engine's CUDA-graph decode steps compute what eager steps compute, on real text?

    PYTHONPATH=. python3 bench/graph_check.py [--out DIR]

SmolLM2-135M (real weights, fp16) generates greedily from prompts of real text of ragged
lengths, in batches of 1, 16 and 64, twice: decode steps replayed as CUDA graphs (the default)
and eager (KVSIM_CUDA_GRAPHS=0). Prefill is eager in both. Reported per batch: the largest
|logit difference| over the steps before the two runs' tokens first differ, the step where they
first differ (if any), and the top-1 agreement of those steps; then one mixed step that keeps
attention scores (H2O's), graph against eager (scored_step). Writes graph_check_<gpu>.json to
--out (default $OUT, else bench/results).

--random-weights: seeded random weights of the model's shape and only the scored step (its token
ids are random draws, so it needs no tokenizer; the real weights' package, ~90 MB, may not reach
the GPU machine).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

_BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(_BENCH)] + [p for p in sys.path if os.path.abspath(p or ".") != _BENCH]

import torch  # noqa: E402

from bench.common import environment, logit_agreement, write_json  # noqa: E402
from engine.generate import generate  # noqa: E402
from engine.loader import load_model  # noqa: E402


def run(loaded, prompts, steps: int, graphs: bool):
    os.environ["KVSIM_CUDA_GRAPHS"] = "1" if graphs else "0"
    return generate(loaded, prompts, steps, block_order_seed=1, stop_at_eos=False, record_logits=True)


def compare(a, b) -> dict:
    first_diff = None
    for step in range(len(a.logits)):
        if [t[:step + 1] for t in a.tokens] != [t[:step + 1] for t in b.tokens]:
            first_diff = step
            break
    upto = first_diff + 1 if first_diff is not None else len(a.logits)  # logits of step k precede token k
    la, lb = torch.stack(a.logits[:upto]), torch.stack(b.logits[:upto])
    diff, scale, agree = logit_agreement(la, lb)
    return {"steps_compared": upto, "first_token_difference_step": first_diff,
            "max_abs_logit_diff": diff, "max_abs_logit": scale, "top1_agreement": agree}


def scored_step(loaded, gen: torch.Generator) -> dict:
    """A mixed step keeping attention scores (H2O's: 4 decode rows, a chunk after a cached prefix,
    a new prompt), replayed from its CUDA graph and run eagerly from the same cache: the largest
    |logit difference| and the largest relative difference of a layer's scores (the graph scores
    its chunks with kernels/prefill_scores.py through the query-tile map and its decode rows in the
    decode kernel's score pass, rows packed one-token first). On the CPU both runs are eager (the
    plumbing only)."""
    from engine.runner import ModelRunner, StepInput
    from kvcache.kv_store import PagedKVStore

    cfg, device = loaded.config, loaded.model.embed_tokens.weight.device
    store = PagedKVStore(cfg.num_layers, 256, 16, cfg.num_kv_heads, cfg.head_dim, dtype="fp16", device=device)
    runner = ModelRunner(loaded.model, store)
    blocks = torch.randperm(256, generator=gen).tolist()
    lengths = [37, 180, 64, 501, 40, 0]  # decode rows, then a cached prefix of 40, then a new prompt
    new = [1, 1, 1, 1, 100, 60]
    batch = []
    for b, (n, k) in enumerate(zip(lengths, new)):
        table = blocks[b * 40:(b + 1) * 40][:-(-(n + k) // 16)]
        slots = [table[i // 16] * 16 + i % 16 for i in range(n + k)]
        ids = torch.randint(0, cfg.vocab_size, (n + k,), generator=gen).tolist()
        if n:
            runner.run([StepInput(ids[:n], 0, slots[:n], table, n)])
        batch.append(StepInput(ids[n:], n, slots[n:], table, n + k))
    state = store.k.clone(), store.v.clone()
    out = {}
    for graphs in (True, False):
        runner.use_cuda_graphs = graphs and device.type == "cuda"
        scores = runner.score_buffers(batch)
        out[graphs] = runner.run(batch, scores), scores
        store.k.copy_(state[0])
        store.v.copy_(state[1])
    (lg, sg), (le, se) = out[True], out[False]
    rel = max(((a.double() - b.double()).norm() / b.double().norm()).item() for a, b in zip(sg, se))
    return {"rows": len(batch), "new_tokens": new, "graph_captured": runner.captures > 0,
            "max_abs_logit_diff": (lg - le).abs().max().item(), "max_layer_scores_rel_diff": rel}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    p.add_argument("--random-weights", action="store_true", help="seeded random weights; the scored step only")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    loaded = load_model(args.model, device="cuda" if cuda else "cpu", dtype=torch.float16 if cuda else torch.float32,
                        random_weights=args.random_weights)
    gen = torch.Generator().manual_seed(0)
    rows = []
    batches = [] if args.random_weights else [int(x) for x in args.batches.split(",")]
    if batches:
        text = resources.files("kvsim").joinpath("data/tinyshakespeare_40k.txt").read_text()
        ids = loaded.tokenizer.encode(text)
    for batch in batches:
        lengths = torch.randint(100, 1500, (batch,), generator=gen).tolist()
        starts = torch.randint(0, len(ids) - 1500, (batch,), generator=gen).tolist()
        prompts = [ids[s:s + n] for s, n in zip(starts, lengths)]
        row = {"batch": batch, "prompt_tokens": lengths, **compare(run(loaded, prompts, args.steps, True),
                                                                  run(loaded, prompts, args.steps, False))}
        rows.append(row)
        print(f"B={batch:<3} steps compared {row['steps_compared']:3d}  first token difference "
              f"{row['first_token_difference_step']}  max |dlogit| {row['max_abs_logit_diff']:.4f} "
              f"(of {row['max_abs_logit']:.1f})  top-1 agreement {row['top1_agreement']:.4f}", flush=True)
    scored = scored_step(loaded, gen)
    print(f"scored mixed step (H2O), graph vs eager: max |dlogit| {scored['max_abs_logit_diff']:.4f}, "
          f"layer scores rel. diff {scored['max_layer_scores_rel_diff']:.2e} (graph captured: {scored['graph_captured']})")
    name = torch.cuda.get_device_name().lower() if cuda else "cpu"
    tag = "h100" if "h100" in name else "h200" if "h200" in name else "gpu" if cuda else "cpu"
    suffix = "_random_weights" if args.random_weights else ""
    write_json(Path(args.out) / f"graph_check_{tag}{suffix}.json",
               {"benchmark": "graph_check", **environment(), "model": args.model, "steps": args.steps,
                "weights": loaded.source,
                "weights_dtype": str(loaded.model.embed_tokens.weight.dtype), "rows": rows,
                "scored_mixed_step": scored})


if __name__ == "__main__":
    main()
