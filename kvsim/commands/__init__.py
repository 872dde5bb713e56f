"""The subcommands, registered in one place. A command is a module with NAME, HELP, `Config` (a
config dataclass tree, see kvsim.config), DEFAULTS (its own defaults, by dotted path) and
`run(config, argv) -> exit code`; adding one is one new module and one line here."""

from __future__ import annotations

import importlib

COMMANDS = (  # module names under kvsim.commands, in the order `kvsim --help` lists them
    "replay",
    "compare",
    "sweep",
    "calc",
    "report",
    "quality",
    "generate",
    "model",
    "profile",
)

RESERVED: dict[str, str] = {}  # names taken by commands still to come: NAME -> what brings it


def load() -> dict:
    """NAME -> module, for every registered command."""
    modules = [importlib.import_module(f"kvsim.commands.{name}") for name in COMMANDS]
    return {m.NAME: m for m in modules}
