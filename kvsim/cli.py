"""The `kvsim` command line. Each subcommand is a module of kvsim.commands with a config tree;
every option is a flag and a key of `--config FILE` (TOML or YAML). Errors caused by the user's
input print one line and exit 2, never a traceback (set KVSIM_DEBUG=1 for one)."""

from __future__ import annotations

import argparse
import os
import sys

from engine.errors import KvsimError
from kvsim import commands
from kvsim.config_io import add_flags, resolve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvsim", description="kvsim: an LLM-serving simulator with a paged KV "
                                     "cache. `kvsim COMMAND --help` lists a command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in commands.load().items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", metavar="FILE",
                       help="TOML or YAML file setting any option below (by section or by name); flags override it")
        add_flags(p, module.Config, module.DEFAULTS)
        p.set_defaults(_module=module)
    for name, what in commands.RESERVED.items():
        p = sub.add_parser(name, help=f"(coming) {what}", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(_module=None, _reserved=what)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (imported only when something went wrong)."""
    from kvcache.dtypes import UnknownKVDtypeError
    from kvcache.errors import KVCacheError
    from workloads.errors import TraceFormatError

    return KvsimError, TraceFormatError, UnknownKVDtypeError, KVCacheError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args._module is None:
            raise KvsimError(f"`kvsim {args.command}` is not available yet: {args._reserved}")
        module = args._module
        config = resolve(module.Config, args, module.DEFAULTS, args.config)
        return module.run(config, argv)
    except BrokenPipeError:  # `kvsim ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("kvsim: interrupted (finished points and files are kept; rerun with the same --out to resume)",
              file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("KVSIM_DEBUG") or not isinstance(e, _user_errors()):
            raise
        print(f"kvsim: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
