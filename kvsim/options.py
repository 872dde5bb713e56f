"""The config sections the simulation commands share: workload, engine, KV cache choice, grid,
parallelism, output. Each is a frozen dataclass that checks itself; no I/O here."""

from __future__ import annotations

from dataclasses import dataclass, fields

from engine.errors import ConfigError
from engine.gpus import GPUS
from kvsim.config import opt

SIM_KV_DTYPES = ("fp32", "fp16", "bf16", "int8", "int8-asym", "fp8")  # what a simulation can store


def policy_names() -> tuple[str, ...]:
    from kvcache.policies import POLICY_NAMES

    return POLICY_NAMES


def _fail(obj, name: str, message: str) -> None:
    flag = next(f.metadata.get("flag") for f in fields(obj) if f.name == name) or "--" + name.replace("_", "-")
    raise ConfigError(f"{obj.SECTION}.{name} ({flag}): {message}")


def _positive(obj, *names: str, allow_none: bool = True) -> None:
    for name in names:
        value = getattr(obj, name)
        if (value is None and not allow_none) or (value is not None and not value > 0):
            _fail(obj, name, f"must be > 0, got {value}")


@dataclass(frozen=True)
class WorkloadOptions:
    SECTION = "workload"
    trace: str | None = opt(None, "request trace file (Azure, Mooncake, BurstGPT, Bailian, Vidur, ShareGPT; "
                                  "format detected); none = the shipped first 2000 requests of the Azure 2023 "
                                  "conversation trace (CC-BY-4.0, Splitwise, Patel et al., ISCA 2024)",
                            positional=True, metavar="TRACE")
    trace_format: str | None = opt(None, "trace format name instead of detecting it", flag="--format")
    skip_invalid: bool = opt(False, "skip (and count) bad rows instead of stopping at the first")
    window: tuple[float, ...] | None = opt(None, "START,END: only requests arriving in [START, END) s", metavar="S,E")
    rate_scale: float = opt(1.0, "replay this many times faster (arrival times divided by it)")
    max_requests: int | None = opt(None, "keep only the first N requests (after --window)", metavar="N")

    def __post_init__(self):
        _positive(self, "rate_scale", "max_requests")
        if self.window is not None and (len(self.window) != 2 or not self.window[1] > self.window[0] >= 0):
            _fail(self, "window", f"expected START,END with 0 <= START < END, got {self.window}")


@dataclass(frozen=True)
class EngineOptions:
    SECTION = "engine"
    model: str = opt("smollm2-135m", "model preset (kvsim model list), .gguf file or HF checkpoint dir")
    backend: str = opt("analytic", "analytic: no tensors, step time from the cost model (seconds for thousands of "
                                   "requests); compute: run the real model each step (on a GPU the step time is "
                                   "measured; it runs about 2 s of wall time per request on an H100 and far more on "
                                   "a CPU, so keep workloads small); auto: compute where a CUDA GPU is present",
                       choices=("analytic", "compute", "auto"))
    gpu: str = opt("h100", "GPU of the cost model (h100 roofline; in compute mode on a GPU, time is measured)",
                   choices=tuple(GPUS))
    kv_blocks: int | None = opt(None, "KV blocks in the cache (one of --kv-blocks, --kv-mem-gib, --gpu-mem-util)",
                                group="kv_size", metavar="N")
    kv_mem_gib: float | None = opt(None, "GiB of KV cache: blocks = this / bytes per block of the KV dtype, so INT8 "
                                         "holds about twice the tokens of fp16", group="kv_size", metavar="GIB")
    gpu_mem_util: float | None = opt(None, "fraction of GPU memory for weights + KV, as vLLM sizes it (0.9 "
                                           "when no size is given)", group="kv_size", metavar="F")
    block_size: int = opt(16, "tokens per KV block")
    prefix_cache: bool = opt(False, "reuse cached prefix blocks (Mooncake-style traces carry prefix ids)")
    max_num_seqs: int = opt(256, "sequences in one step at most")
    max_num_batched_tokens: int = opt(2048, "tokens in one step at most (chunked prefill)")
    max_model_len: int | None = opt(None, "prompt + output tokens per request at most (none: the model's)")
    chunked_prefill: bool = opt(True, "split long prompts over steps")
    preemption: str = opt("recompute", "what a preempted sequence loses", choices=("recompute", "swap"))
    swap_blocks: int = opt(0, "host blocks for swap preemption")
    sink_tokens: int = opt(4, "attention-sink tokens every evicting policy keeps")
    corpus: str | None = opt(None, "text file whose tokens fill prompts in compute mode (none: the shipped "
                                   "Tiny Shakespeare excerpt)")
    random_weights: bool = opt(False, "compute mode: seeded random weights of the model's shape (timing, no "
                                      "text; needs no download)")

    def __post_init__(self):
        _positive(self, "kv_blocks", "kv_mem_gib", "block_size", "max_num_seqs", "max_num_batched_tokens",
                  "max_model_len")
        set_sizes = [n for n in ("kv_blocks", "kv_mem_gib", "gpu_mem_util") if getattr(self, n) is not None]
        if len(set_sizes) > 1:
            _fail(self, set_sizes[1], f"give one of kv_blocks, kv_mem_gib, gpu_mem_util, not {set_sizes}")
        if self.gpu_mem_util is not None and not 0 < self.gpu_mem_util <= 1:
            _fail(self, "gpu_mem_util", f"must be in (0, 1], got {self.gpu_mem_util}")
        if self.swap_blocks < 0 or self.sink_tokens < 0:
            _fail(self, "swap_blocks" if self.swap_blocks < 0 else "sink_tokens", "must be >= 0")
        if self.preemption == "swap" and self.swap_blocks < 1:
            _fail(self, "swap_blocks", "swap preemption needs --swap-blocks >= 1")


def _check_names(obj, name: str, values, valid) -> None:
    for v in values:
        if v not in valid:
            _fail(obj, name, f"unknown {v!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class CacheOptions:
    """One KV cache configuration (replay)."""

    SECTION = "cache"
    policy: str = opt("full", "eviction policy; every policy but full keeps each sequence within --budget tokens "
                              "(the analytic backend counts tokens, so there all such policies time alike)")
    kv_dtype: str = opt("fp16", "KV cache storage dtype", choices=SIM_KV_DTYPES)
    budget: int = opt(512, "tokens an evicting policy keeps per sequence (sinks and recent included)")

    def __post_init__(self):
        _check_names(self, "policy", [self.policy], policy_names())
        _positive(self, "budget", allow_none=False)


@dataclass(frozen=True)
class GridOptions:
    """The KV cache configurations compared (every combination; full ignores the budgets)."""

    SECTION = "grid"
    policies: tuple[str, ...] = opt(("full", "streaming", "h2o"), "eviction policies")
    kv_dtypes: tuple[str, ...] = opt(("fp16", "int8"), "KV cache dtypes", choices=SIM_KV_DTYPES)
    budgets: tuple[int, ...] = opt((512,), "token budgets of the evicting policies")

    def __post_init__(self):
        _check_names(self, "policies", self.policies, policy_names())
        for name in ("policies", "kv_dtypes", "budgets"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                _fail(self, name, f"repeats a value: {values}")
        if min(self.budgets) < 1:
            _fail(self, "budgets", f"must all be >= 1, got {self.budgets}")

    def cache_points(self) -> list[CacheOptions]:
        """Every (policy, dtype, budget) in grid order; `full` once per dtype."""
        out = []
        for policy in self.policies:
            for dtype in self.kv_dtypes:
                for budget in self.budgets[:1] if policy == "full" else self.budgets:
                    out.append(CacheOptions(policy, dtype, budget))
        return out


@dataclass(frozen=True)
class ParallelOptions:
    SECTION = "parallel"
    jobs: int | None = opt(None, "points run at once on this machine (none: one per CPU core; 1: one after "
                                 "another in this process)", metavar="N")
    ray: str | None = opt(None, "run the points as Ray tasks: --ray alone starts a local Ray instance, "
                                "--ray ADDRESS joins a cluster (its workers need kvsim installed)",
                          const="local", metavar="ADDRESS")
    resume: bool = opt(True, "skip points already finished in --out DIR (their files are kept per point)")

    def __post_init__(self):
        _positive(self, "jobs")


@dataclass(frozen=True)
class OutputOptions:
    SECTION = "output"
    out: str | None = opt(None, "run directory (none: runs/<command>-<timestamp>)", metavar="DIR")
    json: bool = opt(False, "print the results as JSON on stdout (tables and progress go to stderr)")
    report: bool = opt(True, "write the PNG plots and report.html")
    progress: bool | None = opt(None, "show a progress bar (none: when stderr is a terminal)")
    seed: int = opt(0, "seed of every random draw (sampling, sessions, prompt tokens)")
