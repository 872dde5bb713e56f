"""The `kvsim` command line. Each subcommand is a small function; errors caused by the user's
input (a KvsimError) print one line and exit 2, never a traceback (set KVSIM_DEBUG=1 for one)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.errors import KvsimError


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from engine.generate import SamplingParams, generate
    from engine.loader import load_model

    device = _device(args.device)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "fp32": torch.float32,
             "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.batch_file:
        path = Path(args.batch_file)
        if not path.is_file():
            raise KvsimError(f"--batch-file {path}: no such file")
        texts = [line for line in path.read_text().splitlines() if line.strip()]
        if not texts:
            raise KvsimError(f"--batch-file {path}: no prompts (one prompt per non-empty line)")
    else:
        texts = [args.prompt]
    loaded = load_model(args.model, device=device, dtype=dtype)
    if loaded.tokenizer is None:
        raise KvsimError(f"model {args.model!r} has no tokenizer (random weights); give a GGUF file or "
                         "a checkpoint directory with tokenizer.json")
    prompts = [loaded.tokenizer.encode(t) for t in texts]
    sampling = SamplingParams(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    result = generate(loaded, prompts, args.max_new_tokens, sampling=sampling, block_size=args.block_size)
    for text, new in zip(texts, result.tokens):
        print(f"{text}\033[1m{loaded.tokenizer.decode(new)}\033[0m" if sys.stdout.isatty()
              else text + loaded.tokenizer.decode(new))
    n_new = sum(len(t) for t in result.tokens)
    print(f"[{loaded.config.name} on {device}, {dtype}: {len(prompts)} prompt(s), {n_new} new tokens; "
          f"prefill {result.prefill_s * 1e3:.0f} ms, decode {result.decode_tokens_per_s:.1f} tokens/s]",
          file=sys.stderr)
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from engine import hub
    from engine.config import PRESETS

    if args.action == "pull":
        for name in args.names or list(hub.PULLABLE):
            print(hub.pull(name))
    else:
        for name, cfg in PRESETS.items():
            real = "real weights (pull)" if name in hub.PULLABLE else "random weights / shape"
            print(f"{name:16s} {cfg.num_params / 1e9:7.2f}B params  layers={cfg.num_layers:3d} "
                  f"heads={cfg.num_heads}/{cfg.num_kv_heads} head_dim={cfg.head_dim}  {real}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text through the paged KV cache")
    g.add_argument("--model", default="smollm2-135m", help="preset name, .gguf file or HF checkpoint dir")
    g.add_argument("--prompt", default="The capital of France is")
    g.add_argument("--batch-file", help="a text file with one prompt per line (run as one batch)")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--block-size", type=int, default=16, choices=[8, 16, 32, 64])
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="weights and activations (auto: fp32 on CPU, bf16 on GPU)")
    g.set_defaults(func=cmd_generate)

    m = sub.add_parser("model", help="list known models, or pull real weights into the cache")
    m.add_argument("action", choices=["list", "pull"])
    m.add_argument("names", nargs="*")
    m.set_defaults(func=cmd_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KvsimError as e:
        if os.environ.get("KVSIM_DEBUG"):
            raise
        print(f"kvsim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
