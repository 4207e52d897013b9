"""The ``shine`` command: one module per subcommand registers its parser; `main` runs it and reports any failure in
one line. ``--quiet`` / ``--verbose`` (on every subcommand) set the verbosity of peft-shine, transformers and peft.

Building the parser imports nothing heavy (each subcommand imports the library inside its ``run``), so ``--help``,
``--version`` and argument errors are immediate when the package is imported lightly (the ``shine`` script).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import peft_shine
from peft_shine.cli import chat, demo, env, eval, hub, quickstart, train
from peft_shine.errors import ShineError


COMMANDS = (quickstart, chat, train, eval, demo, hub, env)  # each has `register(subparsers)` and sets `func`
DESCRIPTION = ("SHINE for transformers and peft: a hypernetwork turns any text context into a LoRA adapter for a "
               "frozen causal LM in one forward pass. Run 'shine COMMAND --help' for the options of a command.")
EPILOG = ("Every failure ends with one line on stderr and exit status 2; set SHINE_TRACEBACK=1 for the traceback. "
          "Bug reports: include the output of 'shine env'.")


def build_parser() -> argparse.ArgumentParser:
    """The ``shine`` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="shine", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {peft_shine.__version__}",
                        help="print the peft-shine version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    for subparser in {id(p): p for p in subparsers.choices.values()}.values():
        add_verbosity_flags(subparser)
    return parser


def add_verbosity_flags(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` (errors only, no progress bars) and ``--verbose`` (info logs) on a (sub)command parser."""
    if any(action.dest == "verbosity" for action in parser._actions):
        return
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", dest="verbosity", action="store_const", const="quiet",
                       help="print results and errors only: no warnings, no progress bars")
    group.add_argument("--verbose", dest="verbosity", action="store_const", const="verbose",
                       help="also print the info logs of peft-shine, transformers and peft")
    for action in parser._actions:  # nested subcommands (shine push hypernetwork ...) get the flags too
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                add_verbosity_flags(child)


def set_verbosity(level: str | None) -> None:
    """Apply ``--quiet`` / ``--verbose`` (``None``: transformers' defaults, warnings and progress bars on)."""
    if level is None:
        return
    import transformers  # heavy: loaded only when a verbosity flag asks to configure it

    if level == "quiet":
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        logging.getLogger("peft_shine").setLevel(logging.ERROR)
        os.environ.setdefault("TQDM_DISABLE", "1")  # every other tqdm bar (datasets, evaluation, downloads)
    elif level == "verbose":
        transformers.logging.set_verbosity_info()
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("peft_shine").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shine`` console script.

    Every failure ends in one line on stderr and exit status 2 (bad data, bad configs, unreadable files, a full
    disk, errors of the libraries underneath); set ``SHINE_TRACEBACK=1`` to see the traceback instead.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "train":  # `shine train` passes them to HfArgumentParser (TrainingArguments)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.training_flags = unknown
    set_verbosity(getattr(args, "verbosity", None))
    try:
        return int(args.func(args) or 0)
    except Exception as error:  # noqa: BLE001 - the command line reports every failure in one line
        if os.environ.get("SHINE_TRACEBACK", "").strip() not in ("", "0"):
            raise
        print(f"shine {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """The error's message on one line; the exception type is named when it is not a peft-shine error or one of
    the plain builtin ones."""
    text = " ".join(str(error).split()) or "(no message)"
    if isinstance(error, ShineError | ValueError | KeyError | OSError | RuntimeError | TypeError):
        return text
    return f"{type(error).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())
