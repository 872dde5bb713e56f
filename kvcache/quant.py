"""Quantize K/V on write and dequantize as a torch reference, per (token, kv head).

Symmetric INT8 and FP8 use the formula of `kernels.reference.quantize_ref` (one float16 scale per
row of head_dim, the one the Triton kernels read). The asymmetric INT8 option lives here:
    zero_point = row min rounded down to float16      (so no value falls below the grid)
    scale      = (row max - zero_point) / 255 rounded up to float16 (so none falls above it);
                 1 for a constant row
    q          = clamp(round((x - zero_point) / scale) - 128, -128, 127)   int8
    x         ~= (q + 128) * scale + zero_point        error <= scale / 2
"""

from __future__ import annotations

import torch

from kernels.reference import dequantize_ref, quantize_ref
from kvcache.dtypes import KVDtype, get_kv_dtype


def quantize_asym_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [..., D] -> (q [..., D] int8, scale [...] float16, zero_point [...] float16)."""
    xf = x.float()
    lo, hi = xf.amin(dim=-1), xf.amax(dim=-1)
    zero = lo.to(torch.float16)
    zero = torch.where(zero.float() > lo, torch.nextafter(zero, torch.full_like(zero, float("-inf"))), zero)
    span = hi - zero.float()
    scale = (span / 255).to(torch.float16)
    scale = torch.where(scale.float() * 255 < span, torch.nextafter(scale, torch.full_like(scale, float("inf"))),
                        scale)
    scale = torch.where(span > 0, scale, torch.ones_like(scale))
    y = (xf - zero.float()[..., None]) / scale.float()[..., None]
    q = (y.round() - 128).clamp(-128, 127).to(torch.int8)
    return q, scale, zero


def dequantize_asym_ref(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """(q [..., D] int8, scale [...], zero_point [...]) -> float32 [..., D]."""
    return (q.float() + 128) * scale.float()[..., None] + zero_point.float()[..., None]


def quantize(x: torch.Tensor, dtype: str | KVDtype) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """x [..., D] -> (stored [..., D], scale [...] or None, zero_point [...] or None)."""
    spec = get_kv_dtype(dtype)
    if not spec.quantized:
        return x.to(spec.torch_dtype), None, None
    if spec.has_zero_point:
        return quantize_asym_ref(x)
    q, scale = quantize_ref(x, spec.torch_dtype)
    return q, scale, None


def dequantize(stored: torch.Tensor, scale: torch.Tensor | None = None,
               zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """The float32 values a stored row stands for (inverse of `quantize` up to rounding)."""
    if scale is None:
        return stored.float()
    if zero_point is not None:
        return dequantize_asym_ref(stored, scale, zero_point)
    return dequantize_ref(stored, scale)
