"""Load a Hugging Face checkpoint directory: config.json, *.safetensors (sharded too), tokenizer.json."""

from __future__ import annotations

import json
from pathlib import Path

from engine.config import config_from_hf
from engine.errors import ModelLoadError
from engine.tokenizer import Tokenizer


def read_hf_dir(path: Path, name: str | None = None):
    """-> (ModelConfig, {parameter name without 'model.': tensor}, Tokenizer or None)."""
    from safetensors.torch import load_file

    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise ModelLoadError(f"{path}: no config.json (a Hugging Face checkpoint directory needs one)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    config = config_from_hf(cfg, name or path.name, str(cfg_path))

    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / s for s in shards]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weights")
    weights = {}
    for f in files:
        if not f.exists():
            raise ModelLoadError(f"{index}: names shard {f.name}, which is missing")
        try:
            tensors = load_file(str(f))
        except Exception as e:  # safetensors raises its own SafetensorError
            raise ModelLoadError(f"{f}: not a readable safetensors file ({e})") from None
        for key, value in tensors.items():
            weights[key.removeprefix("model.")] = value
    tok_path = path / "tokenizer.json"
    tokenizer = Tokenizer.from_file(tok_path, config.bos_token_id, config.eos_token_id) if tok_path.exists() else None
    return config, weights, tokenizer
