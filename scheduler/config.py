"""Scheduler configuration: one validated, frozen dataclass with help text per field."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from engine.errors import ConfigError


@dataclass(frozen=True)
class SchedulerConfig:
    num_blocks: int = field(default=4096, metadata={"help": "KV blocks on the device"})
    block_size: int = field(default=16, metadata={"help": "tokens per KV block"})
    max_num_seqs: int = field(default=256, metadata={"help": "sequences in one step at most"})
    max_num_batched_tokens: int = field(default=2048, metadata={"help": "tokens in one step at most"})
    max_model_len: int = field(default=8192, metadata={"help": "prompt + output tokens of one request at most"})
    enable_chunked_prefill: bool = field(default=True, metadata={"help": "split long prompts over steps (Sarathi)"})
    preemption_mode: str = field(default="recompute", metadata={"help": "recompute or swap"})
    num_swap_blocks: int = field(default=0, metadata={"help": "host blocks for swap preemption"})
    watermark: float = field(default=0.01, metadata={"help": "fraction of blocks admission keeps free"})
    enable_prefix_caching: bool = field(default=False, metadata={"help": "reuse cached full blocks"})
    prefix_id_block_size: int = field(default=512, metadata={"help": "tokens per trace prefix id (Mooncake: 512)"})
    use_priorities: bool = field(default=False, metadata={"help": "order queues by request priority first"})
    max_decode_run: int = field(default=256, metadata={"help": "decode steps one fast-path event may cover (1 = off)"})

    def __post_init__(self):
        positive = ("num_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len",
                    "max_decode_run", "prefix_id_block_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"scheduler.{name} must be >= 1, got {getattr(self, name)}")
        if self.preemption_mode not in ("recompute", "swap"):
            raise ConfigError(f"scheduler.preemption_mode must be 'recompute' or 'swap', got {self.preemption_mode!r}")
        if self.preemption_mode == "swap" and self.num_swap_blocks < 1:
            raise ConfigError("scheduler.preemption_mode 'swap' needs num_swap_blocks >= 1")
        if not 0 <= self.watermark < 1:
            raise ConfigError(f"scheduler.watermark must be in [0, 1), got {self.watermark}")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            # a recomputed sequence refills prompt + output in one step: it must always fit
            raise ConfigError(f"scheduler.max_num_batched_tokens ({self.max_num_batched_tokens}) must be >= "
                              f"max_model_len ({self.max_model_len}) when chunked prefill is off")

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}
