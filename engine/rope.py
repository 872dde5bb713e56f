"""Rotary position embedding (the Hugging Face "rotate half" layout) with Llama 3.1 scaling."""

from __future__ import annotations

import math

import torch

from engine.config import ModelConfig, RopeScaling


def _llama3_scale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Stretch low frequencies by `factor`, keep high ones, blend in between (Llama 3.1)."""
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    return torch.where((wavelen >= high_wavelen) & (wavelen <= low_wavelen), blended, out)


class RotaryEmbedding:
    """cos/sin tables for positions [0, max_positions), built once in float32."""

    def __init__(self, config: ModelConfig, max_positions: int, device: torch.device | str = "cpu"):
        d = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        if config.rope_scaling is not None:
            inv_freq = _llama3_scale(inv_freq, config.rope_scaling)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)  # [P, D/2]
        self.cos = angles.cos().float().to(device)
        self.sin = angles.sin().float().to(device)

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [T, H, D] rotated by positions [T]; computed in float32, returned in x's dtype."""
        cos = self.cos[positions][:, None, :]  # [T, 1, D/2]
        sin = self.sin[positions][:, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
