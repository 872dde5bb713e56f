"""The quality table on a GPU: `kvsim quality` at full size (issue 5), written as CSV + JSON.

    python bench/quality_gpu.py OUT_DIR [--max-tokens 4096]

Runs every policy at budgets 64..1024 with fp16 and INT8 KV over 4,096 tokens of the shipped
text with SmolLM2-135M (fp16 weights), and passkey retrieval at budgets 256 and 1024.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.common import environment, write_json  # noqa: E402
from kvsim.quality.run import QualityConfig, run_quality  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--kv-dtypes", default="fp16,int8")
    parser.add_argument("--passkey-lengths", default="1024,2048")
    parser.add_argument("--policies", default="full,window,streaming,h2o,tova,snapkv,random,knorm")
    parser.add_argument("--budgets", default="64,128,256,512,1024")
    parser.add_argument("--passkey-budgets", default="256,1024")
    parser.add_argument("--smoke", type=int, default=0, help="time N steps on random weights and stop")
    args = parser.parse_args()
    if args.smoke:
        return smoke(args.smoke)
    ints = lambda text: tuple(int(x) for x in text.split(",") if x)  # noqa: E731
    cfg = QualityConfig(max_tokens=args.max_tokens, kv_dtypes=tuple(args.kv_dtypes.split(",")),
                        policies=tuple(args.policies.split(",")), budgets=ints(args.budgets),
                        passkey_lengths=ints(args.passkey_lengths), passkey_depths=(0.0, 0.5, 1.0),
                        passkey_budgets=ints(args.passkey_budgets))
    start = time.perf_counter()
    result = run_quality(cfg, log=lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    result["quality"].to_csv(args.out / "quality.csv", index=False)
    result["passkey"].to_csv(args.out / "passkey.csv", index=False)
    write_json(args.out / "quality_gpu.json", {"benchmark": "quality", **environment(), **result["summary"],
                                                "rows": result["quality"].to_dict("records")})
    print(result["quality"].to_string(), flush=True)
    print(result["passkey"].groupby(["policy", "budget"]).correct.mean().to_string())
    print(f"token 0 attention share: {result['summary']['token0_attention_share']:.3f}; "
          f"wall {time.perf_counter() - start:.0f} s")


def smoke(steps: int) -> None:
    """Seconds per teacher-forced step with every point in one batch, on random weights."""
    import numpy as np
    import torch

    from engine.loader import load_model
    from kvsim.quality.run import _points
    from kvsim.quality.stream import stream_points

    loaded = load_model("smollm2-135m", random_weights=True, device="cuda", dtype=torch.float16)
    ids = np.random.default_rng(0).integers(0, 49152, steps + 32).tolist()
    points = _points(QualityConfig())
    ref = None
    for dtype in ("fp16", "int8"):
        torch.cuda.synchronize()
        t = time.perf_counter()
        _, ref, _ = stream_points(loaded, ids, points, dtype, ref_logp=ref, track_sink=dtype == "fp16")
        torch.cuda.synchronize()
        print(f"smoke {dtype}: {len(points)} points x {steps} steps: {(time.perf_counter() - t) / steps * 1e3:.1f} ms/step",
              flush=True)


if __name__ == "__main__":
    main()
