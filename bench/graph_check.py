"""Do the engine's CUDA-graph decode steps compute what eager steps compute, on real text?

    PYTHONPATH=. python3 bench/graph_check.py [--out DIR]

SmolLM2-135M (real weights, fp16) generates greedily from prompts of real text of ragged
lengths, in batches of 1, 16 and 64, twice: decode steps replayed as CUDA graphs (the default)
and eager (KVSIM_CUDA_GRAPHS=0). Prefill is eager in both. Reported per batch: the largest
|logit difference| over the steps before the two runs' tokens first differ, the step where they
first differ (if any), and the top-1 agreement of those steps. Writes graph_check_<gpu>.json to
--out (default $OUT, else bench/results).
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    loaded = load_model(args.model, device="cuda" if cuda else "cpu", dtype=torch.float16 if cuda else torch.float32)
    text = resources.files("kvsim").joinpath("data/tinyshakespeare_40k.txt").read_text()
    ids = loaded.tokenizer.encode(text)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in (int(x) for x in args.batches.split(",")):
        lengths = torch.randint(100, 1500, (batch,), generator=gen).tolist()
        starts = torch.randint(0, len(ids) - 1500, (batch,), generator=gen).tolist()
        prompts = [ids[s:s + n] for s, n in zip(starts, lengths)]
        row = {"batch": batch, "prompt_tokens": lengths, **compare(run(loaded, prompts, args.steps, True),
                                                                  run(loaded, prompts, args.steps, False))}
        rows.append(row)
        print(f"B={batch:<3} steps compared {row['steps_compared']:3d}  first token difference "
              f"{row['first_token_difference_step']}  max |dlogit| {row['max_abs_logit_diff']:.4f} "
              f"(of {row['max_abs_logit']:.1f})  top-1 agreement {row['top1_agreement']:.4f}", flush=True)
    name = torch.cuda.get_device_name().lower() if cuda else "cpu"
    tag = "h100" if "h100" in name else "h200" if "h200" in name else "gpu" if cuda else "cpu"
    write_json(Path(args.out) / f"graph_check_{tag}.json",
               {"benchmark": "graph_check", **environment(), "model": args.model, "steps": args.steps,
                "weights_dtype": str(loaded.model.embed_tokens.weight.dtype), "rows": rows})


if __name__ == "__main__":
    main()
