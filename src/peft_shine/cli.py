"""The ``shine`` command. Each subcommand lives in `peft_shine.commands.<name>` and registers itself."""

from __future__ import annotations

import argparse
import importlib
import os
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
    """Entry point of the ``shine`` console script.

    Every failure ends in one line on stderr and exit status 2 (bad data, bad configs, unreadable files, a full
    disk, errors of the libraries underneath); set ``SHINE_TRACEBACK=1`` to see the traceback instead.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as error:  # noqa: BLE001 - the command line reports every failure in one line
        if os.environ.get("SHINE_TRACEBACK", "").strip() not in ("", "0"):
            raise
        print(f"shine {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """The error's message on one line; the exception type is named when it is not one of the plain ones."""
    text = " ".join(str(error).split()) or "(no message)"
    if isinstance(error, ValueError | KeyError | OSError | RuntimeError | TypeError):
        return text
    return f"{type(error).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
