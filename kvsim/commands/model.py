"""List the known models (presets and their shapes), or pull real weights into the cache."""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.config import opt

NAME = "model"
HELP = "list known models, or pull real weights into the cache"
DEFAULTS: dict = {}


@dataclass(frozen=True)
class Config:
    action: str = opt("list", "list or pull", positional=True, choices=("list", "pull"), metavar="{list,pull}")
    names: tuple[str, ...] = opt((), "models to pull (default: every pullable one)", positional=True,
                                 metavar="NAME")


def run(config: Config, argv: list[str]) -> int:
    from engine import hub
    from engine.config import PRESETS

    if config.action == "pull":
        for name in config.names or list(hub.PULLABLE):
            print(hub.pull(name))
    else:
        for name, cfg in PRESETS.items():
            real = "real weights (pull)" if name in hub.PULLABLE else "random weights / shape"
            print(f"{name:16s} {cfg.num_params / 1e9:7.2f}B params  layers={cfg.num_layers:3d} "
                  f"heads={cfg.num_heads}/{cfg.num_kv_heads} head_dim={cfg.head_dim}  {real}")
    return 0
