"""Entry point of the ``credits`` console script.

Each command group lives in its own ``cli/*_cmds.py`` module exposing ``register(subparsers)``;
a command's handler takes the parsed namespace and returns the process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from domain.errors import CreditsError

# Command modules, in the order their groups appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "up_cmds",
    "api_cmds",
    "worker_cmds",
    "demo_cmds",
    "ledger_cmds",
    "bench_cmds",
    "forecast_cmds",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credits", description="CommDesk Credits")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        import_module(f"cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CreditsError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
