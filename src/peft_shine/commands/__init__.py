"""Subcommands of the ``shine`` CLI (one module each, registered in `peft_shine.cli.COMMANDS`)."""
