"""What every benchmark records beside its numbers: the machine, the date, the versions."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    import numpy
    import pandas

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "cpu": cpu_name(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "numpy": numpy.__version__, "pandas": pandas.__version__}
    if "torch" in sys.modules:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    return env


def write_json(path: Path, payload: dict) -> None:
    """Atomically: a half-written result file never exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def write_result(out: str | None, filename: str, result: dict) -> Path:
    """A benchmark's JSON at --out, else $OUT/filename, else bench/results/filename; says where."""
    path = Path(out) if out else Path(os.environ.get("OUT", "bench/results")) / filename
    write_json(path, result)
    print(f"wrote {path}")
    return path


def random_weights_model(name: str, device: str):
    """-> (torch.device, the model of `name`'s shape with seeded random weights): fp16 on a GPU,
    fp32 elsewhere (smoke runs), as the step benches time it."""
    import torch

    from engine.loader import load_model

    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, load_model(name, device=device, dtype=dtype, random_weights=True)


def logit_agreement(ours, ref) -> tuple[float, float, float]:
    """(max |ours - ref|, max |ref|, fraction of rows whose argmax agrees) of two logits tensors
    [..., vocab]: how the benches compare a path with its peer."""
    return ((ours - ref).abs().max().item(), ref.abs().max().item(),
            (ours.argmax(-1) == ref.argmax(-1)).float().mean().item())


def copy_bandwidth(device="cuda", num_bytes: int = 2**30) -> dict:
    """Device-to-device copy bandwidth: bytes read + bytes written per second, the convention of
    bench/kernels.py (a 1 GiB copy moves 2 GiB). On a GPU, the median of triton.testing.do_bench
    (L2 flushed before each call); elsewhere (smoke runs), the median of 5 host-timed copies."""
    import time

    import torch

    device = torch.device(device)
    src = torch.randn(num_bytes // 4, device=device, dtype=torch.float32)  # [num_bytes / 4]
    dst = torch.empty_like(src)
    if device.type == "cuda":
        import triton.testing

        ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=60, return_mode="median")
    else:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            dst.copy_(src)
            times.append((time.perf_counter() - start) * 1e3)
        ms = sorted(times)[2]
    moved = 2 * src.numel() * 4
    return {"bytes_moved": moved, "ms": ms, "gb_per_s": moved / ms / 1e6,
            "convention": "(bytes read + bytes written) / time of one device-to-device copy"}
