"""Model shapes: one dataclass for every Llama-family decoder, and named presets.

A config alone (no weights) is enough for everything that does not execute the model: the KV
calculator, the analytic backend and the cost model. Shapes follow the models' published
Hugging Face `config.json` files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from engine.errors import ConfigError, ModelLoadError


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 "llama3" frequency scaling (long-context RoPE)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "vocab_size", "head_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model config {self.name!r}: {name} must be > 0, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model config {self.name!r}: num_heads ({self.num_heads}) must be a "
                             f"multiple of num_kv_heads ({self.num_kv_heads})")

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 = MHA, num_heads = MQA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def num_params(self) -> int:
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * d * (self.num_heads * 2 + self.num_kv_heads * 2)  # q, o, k, v
        per_layer = attn + 3 * h * i + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embed + h

    def kv_bytes_per_token(self, bytes_per_element: float = 2.0) -> float:
        """K and V of one token over all layers, without scales."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


_LLAMA31_ROPE = RopeScaling(8.0, 1.0, 4.0, 8192)

PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        ModelConfig("smollm2-135m", hidden_size=576, intermediate_size=1536, num_layers=30,
                    num_heads=9, num_kv_heads=3, vocab_size=49152, rope_theta=100000.0,
                    tie_word_embeddings=True, max_position_embeddings=8192),
        ModelConfig("llama-3.2-1b", hidden_size=2048, intermediate_size=8192, num_layers=16,
                    num_heads=32, num_kv_heads=8, vocab_size=128256, head_dim=64,
                    rope_theta=500000.0, rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192),
                    tie_word_embeddings=True, max_position_embeddings=131072,
                    bos_token_id=128000, eos_token_id=128001),
        ModelConfig("llama-3.1-8b", hidden_size=4096, intermediate_size=14336, num_layers=32,
                    num_heads=32, num_kv_heads=8, vocab_size=128256, rope_theta=500000.0,
                    rope_scaling=_LLAMA31_ROPE, max_position_embeddings=131072,
                    bos_token_id=128000, eos_token_id=128001),
        ModelConfig("llama-2-7b", hidden_size=4096, intermediate_size=11008, num_layers=32,
                    num_heads=32, num_kv_heads=32, vocab_size=32000, max_position_embeddings=4096),
        # Mistral-7B-v0.1 (its 4096-token sliding window is not modelled: attention is full).
        ModelConfig("mistral-7b", hidden_size=4096, intermediate_size=14336, num_layers=32,
                    num_heads=32, num_kv_heads=8, vocab_size=32000, max_position_embeddings=32768),
        ModelConfig("llama-3.1-70b", hidden_size=8192, intermediate_size=28672, num_layers=80,
                    num_heads=64, num_kv_heads=8, vocab_size=128256, rope_theta=500000.0,
                    rope_scaling=_LLAMA31_ROPE, max_position_embeddings=131072,
                    bos_token_id=128000, eos_token_id=128001),
    ]
}


def config_from_hf(cfg: dict, name: str, where: str) -> ModelConfig:
    """A ModelConfig from a Hugging Face config.json dict; `where` names the file for errors."""
    def need(key):
        if key not in cfg:
            raise ModelLoadError(f"{where}: config.json has no field {key!r} (needed for a Llama-family model)")
        return cfg[key]

    rope = None
    rs = cfg.get("rope_scaling") or (cfg.get("rope_parameters") if isinstance(cfg.get("rope_parameters"), dict) else None)
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        rope = RopeScaling(float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"]),
                           int(rs["original_max_position_embeddings"]))
    theta = cfg.get("rope_theta") or (rs or {}).get("rope_theta") or 10000.0
    num_heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    eos = cfg.get("eos_token_id")
    return ModelConfig(
        name=name, hidden_size=hidden, intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")), num_heads=num_heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or num_heads),
        vocab_size=int(need("vocab_size")), head_dim=int(cfg.get("head_dim") or hidden // num_heads),
        rope_theta=float(theta), rope_scaling=rope, rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        bos_token_id=cfg.get("bos_token_id"), eos_token_id=eos[0] if isinstance(eos, list) else eos,
    )
