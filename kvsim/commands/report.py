"""Write (again) the plots and the self-contained HTML report of a run directory."""

from __future__ import annotations

from dataclasses import dataclass

from kvsim.config import opt

NAME = "report"
HELP = "write the HTML report (tables and PNG plots) of a run directory"
DEFAULTS: dict = {}


@dataclass(frozen=True)
class Config:
    run_dir: str | None = opt(None, "a run directory written by replay, compare or sweep (none: the newest "
                                    "under runs/)", positional=True, metavar="RUN_DIR")


def run(config: Config, argv: list[str]) -> int:
    from pathlib import Path

    from engine.errors import KvsimError
    from kvsim.report import build

    path = config.run_dir
    if path is None:
        runs = sorted((p for p in Path("runs").glob("*") if (p / "summary.json").is_file()),
                      key=lambda p: p.stat().st_mtime)
        if not runs:
            raise KvsimError("no run directory given and none under runs/")
        path = runs[-1]
    print(build(Path(path)))
    return 0
