"""``--device`` and ``--dtype`` (parsed into a `peft_shine.loading.Placement`), shared by every command that loads
a base LM (quickstart, chat, eval, demo, train).

Defaults: CUDA when a CUDA device is available, otherwise CPU; bf16 where the device multiplies bf16 fast (a GPU with
bf16, a CPU with bf16 matrix units: detected at run time by
`peft_shine.storage.cpu_features`), otherwise fp32 (fp16 is
never chosen silently). ``--dtype`` is the **base LM's** dtype; the hypernetwork's own weights stay
fp32 (master weights) whatever it says. ``--device auto-map`` spreads a base too large for one GPU over every
visible GPU (``device_map="auto"``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from peft_shine.cli.defaults import DTYPE_NAMES, SPREAD


if TYPE_CHECKING:
    from peft_shine.loading import Placement


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` and ``--dtype`` (both default ``auto``)."""
    parser.add_argument("--device", default="auto",
                        help=f"where the base LM runs: auto (CUDA when available, else CPU), cpu, cuda, cuda:N, mps, "
                             f"or {SPREAD} (spread over every visible GPU)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPE_NAMES],
                        help="the base LM's dtype: auto (bf16 on a GPU that supports it or a CPU with fast bf16 matrix "
                             "products for this command's work, detected at run time; else fp32); the "
                             "hypernetwork's own weights stay fp32")


def placement_from_args(args: argparse.Namespace, prefer_bf16: bool = False) -> Placement:
    """The `Placement` of a parsed command line (``auto`` for commands without the options)."""
    from peft_shine.loading import resolve_placement  # torch: loaded when a command runs, not to parse

    return resolve_placement(getattr(args, "device", "auto"), getattr(args, "dtype", "auto"), prefer_bf16)


__all__ = ["SPREAD", "add_device_options", "placement_from_args"]
