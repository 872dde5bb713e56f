"""Generate text with the real model through the paged KV cache (greedy by default)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from engine.errors import KvsimError
from kvsim.config import opt

NAME = "generate"
HELP = "generate text through the paged KV cache"
DEFAULTS: dict = {}


@dataclass(frozen=True)
class Config:
    model: str = opt("smollm2-135m", "preset name, .gguf file or HF checkpoint dir")
    prompt: str = opt("The capital of France is", "the prompt")
    batch_file: str | None = opt(None, "a text file with one prompt per line (run as one batch)", metavar="FILE")
    max_new_tokens: int = opt(32, "tokens to generate per prompt")
    temperature: float = opt(0.0, "sampling temperature; 0 = greedy")
    top_p: float = opt(1.0, "nucleus sampling mass")
    seed: int = opt(0, "sampling seed")
    block_size: int = opt(16, "tokens per KV block", choices=(8, 16, 32, 64))
    device: str = opt("auto", "auto, cpu, cuda, cuda:N")
    dtype: str = opt("auto", "weights and activations (auto: fp32 on CPU, bf16 on GPU)",
                     choices=("auto", "fp32", "fp16", "bf16"))


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(config: Config, argv: list[str]) -> int:
    import torch

    from engine.generate import SamplingParams, generate
    from engine.loader import load_model

    device = _device(config.device)
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "fp32": torch.float32,
             "fp16": torch.float16, "bf16": torch.bfloat16}[config.dtype]
    if config.batch_file:
        path = Path(config.batch_file)
        if not path.is_file():
            raise KvsimError(f"--batch-file {path}: no such file")
        texts = [line for line in path.read_text().splitlines() if line.strip()]
        if not texts:
            raise KvsimError(f"--batch-file {path}: no prompts (one prompt per non-empty line)")
    else:
        texts = [config.prompt]
    loaded = load_model(config.model, device=device, dtype=dtype)
    if loaded.tokenizer is None:
        raise KvsimError(f"model {config.model!r} has no tokenizer (random weights); give a GGUF file or "
                         "a checkpoint directory with tokenizer.json")
    prompts = [loaded.tokenizer.encode(t) for t in texts]
    sampling = SamplingParams(temperature=config.temperature, top_p=config.top_p, seed=config.seed)
    result = generate(loaded, prompts, config.max_new_tokens, sampling=sampling, block_size=config.block_size)
    for text, new in zip(texts, result.tokens):
        print(f"{text}\033[1m{loaded.tokenizer.decode(new)}\033[0m" if sys.stdout.isatty()
              else text + loaded.tokenizer.decode(new))
    n_new = sum(len(t) for t in result.tokens)
    print(f"[{loaded.config.name} on {device}, {dtype}: {len(prompts)} prompt(s), {n_new} new tokens; "
          f"prefill {result.prefill_s * 1e3:.0f} ms, decode {result.decode_tokens_per_s:.1f} tokens/s]",
          file=sys.stderr)
    return 0
