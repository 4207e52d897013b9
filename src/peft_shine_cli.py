"""The ``shine`` console script. It lives outside the `peft_shine` package so that it can ask for a light import of
it (`peft_shine.LAZY_IMPORT_ENV`) before Python runs the package's ``__init__``: parsing, ``--help``, ``--version``
and argument errors then never load torch, transformers or peft. The command that runs imports what it needs.
"""

from __future__ import annotations

import os


LAZY_IMPORT_ENV = "PEFT_SHINE_LAZY_IMPORT"  # the same name as peft_shine.LAZY_IMPORT_ENV (which is not loaded yet)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shine`` console script (see `peft_shine.cli.main.main`)."""
    ours = LAZY_IMPORT_ENV not in os.environ
    if ours:
        os.environ[LAZY_IMPORT_ENV] = "1"
    try:
        from peft_shine.cli.main import main as run  # after the variable is set: the package reads it on import
    finally:
        if ours:  # child processes (accelerate, subprocesses) import the package as usual
            del os.environ[LAZY_IMPORT_ENV]
    return run(argv)
