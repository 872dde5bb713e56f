"""What eviction policies and KV dtypes cost, on a real model and real text: streaming perplexity,
top-1 agreement and KL with the fp16 full cache, passkey retrieval by depth and length, and the
attention share of token 0. Writes quality.csv/.parquet, passkey.csv/.parquet, quality.json and
PNG plots; `kvsim compare --quality DIR/quality.csv` joins the table to the serving metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvsim.options import OutputOptions
from kvsim.quality.run import QualityConfig

NAME = "quality"
HELP = "perplexity / agreement / KL / passkey of eviction policies and KV dtypes on a real model"
DEFAULTS: dict = {}


@dataclass(frozen=True)
class Config:
    quality: QualityConfig = field(default_factory=QualityConfig)
    output: OutputOptions = field(default_factory=OutputOptions)


def run(config: Config, argv: list[str]) -> int:
    import sys

    from kvsim.outputs import write_config
    from kvsim.quality.report import write_quality
    from kvsim.quality.run import run_quality
    from kvsim.rundir import dumps, new_run_dir

    run_dir = new_run_dir(config.output.out, NAME)
    write_config(run_dir, config, DEFAULTS)
    result = run_quality(config.quality, log=lambda m: print(m, file=sys.stderr), seed=config.output.seed)
    if config.output.report:
        write_quality(run_dir, result)
    table = result["quality"]
    if config.output.json:
        print(dumps(table.to_dict("records")))
    else:
        print(table.to_string(index=False))
        print(f"token 0 receives {result['summary']['token0_attention_share']:.1%} of all attention; "
              f"written to {run_dir}")
    return 0
