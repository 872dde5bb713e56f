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
    args = parser.parse_args()
    cfg = QualityConfig(max_tokens=args.max_tokens, kv_dtypes=tuple(args.kv_dtypes.split(",")),
                        passkey_lengths=tuple(int(x) for x in args.passkey_lengths.split(",") if x),
                        passkey_depths=(0.0, 0.5, 1.0), passkey_budgets=(256, 1024))
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


if __name__ == "__main__":
    main()
