"""The ``shine`` command: `main` parses and reports errors, one module per subcommand registers itself."""

from peft_shine.cli.main import build_parser, main, one_line


__all__ = ["build_parser", "main", "one_line"]
