"""GPU presets for the roofline cost model: datasheet peaks and the fraction a real kernel gets.

The efficiencies are defaults for GPUs never profiled; `kvsim profile` replaces them with
measured tables. H100 figures as measured on the lent H100 (2026-11-13, KINDS.md): a
device-to-device copy at about 3.0 TB/s (read + write) against 3.35 TB/s peak, a bf16 GEMM at
798 TFLOP/s against 989.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import ConfigError


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    hbm_bytes_per_s: float  # datasheet peak
    matmul_flops_per_s: float  # dense bf16/fp16 tensor-core peak
    num_sms: int
    host_link_bytes_per_s: float  # PCIe/NVLink-C2C to host, for swap
    bandwidth_efficiency: float = 0.85
    matmul_efficiency: float = 0.70
    step_overhead_s: float = 250e-6  # per engine step: scheduling, launches, sampling
    layer_overhead_s: float = 4e-6  # per layer and step: kernel launches and small ops


GPUS: dict[str, GPU] = {
    g.name: g
    for g in [
        GPU("h100", 80 * 2**30, 3.35e12, 989e12, 132, 55e9, bandwidth_efficiency=0.89, matmul_efficiency=0.75),
        GPU("h200", 141 * 10**9, 4.8e12, 989e12, 132, 55e9, bandwidth_efficiency=0.89, matmul_efficiency=0.75),
        GPU("a100", 80 * 2**30, 2.039e12, 312e12, 108, 25e9),
        GPU("l40s", 48 * 2**30, 0.864e12, 362e12, 142, 25e9),
    ]
}


def get_gpu(name: str) -> GPU:
    key = name.lower().replace("nvidia ", "").split()[0] if name else name
    if key not in GPUS:
        raise ConfigError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return GPUS[key]
