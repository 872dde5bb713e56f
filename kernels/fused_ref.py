"""Plain torch references for the fused per-layer kernels (kernels/fused_ops.py).

They define the semantics the Triton kernels are tested against, and are what kernels.fused runs
on CPU tensors. Each computes in float32 and rounds where the Hugging Face Llama code rounds:

    rms_norm_ref   HF LlamaRMSNorm: normalize in fp32, round to x's dtype, then multiply by the
                   weight (torch promotion: the product is rounded to the promoted dtype);
                   with a residual, h = x + residual rounded to x's dtype first (as torch adds).
    rotary_ref_    engine.rope.RotaryEmbedding ("rotate half"), in place.
    silu_mul_ref   silu(gate) * up in fp32, rounded once (F.silu(g) * u rounds twice).
"""

from __future__ import annotations

import torch


def rms_norm_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x [T, H], weight [H] -> out [T, H]; with residual [T, H] -> (out, h) where h = x + residual.

    out's dtype is torch.promote_types(x.dtype, weight.dtype) (x's dtype when they agree).
    """
    if residual is not None:
        h = x + residual  # [T, H] in x's dtype: torch rounds the fp32 sum once
        return rms_norm_ref(h, weight, eps), h
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotary_ref_(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
) -> None:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place by cos/sin [P, D/2] float32 at positions [T]."""
    cos_t = cos[positions][:, None, :]  # [T, 1, D/2]
    sin_t = sin[positions][:, None, :]
    for x in (q, k):
        x1, x2 = x.float().chunk(2, dim=-1)
        x.copy_(torch.cat([x1 * cos_t - x2 * sin_t, x2 * cos_t + x1 * sin_t], dim=-1))


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] -> silu(gate_up[:, :I]) * gate_up[:, I:] [T, I], in fp32, rounded once."""
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up).to(gate_up.dtype)
