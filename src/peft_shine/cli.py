"""The ``shine`` command. Each subcommand lives in `peft_shine.commands.<name>` and registers itself."""

from __future__ import annotations

import argparse
import importlib
import sys


# subcommand modules, each with `register(subparsers)`; a module sets `func` on its parser
COMMANDS = ["quickstart", "chat", "train", "eval", "demo", "hub"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shine", description="SHINE: turn a text context into a LoRA adapter.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"peft_shine.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shine`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, OSError, RuntimeError, TypeError) as error:
        print(f"shine {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
