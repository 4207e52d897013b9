"""Loading hypernetwork checkpoints safely: safetensors only by default, clear errors for damaged files."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class CheckpointError(OSError):
    """A hypernetwork checkpoint is missing, unsafe to load, truncated or corrupted."""


def load_checkpoint_safely(loader: Callable, path: str | os.PathLike, args: tuple, kwargs: dict[str, Any],
                           allow_pickle: bool = False):
    """Call ``loader(path, *args, **kwargs)`` (a `from_pretrained`) reading safetensors only unless
    ``allow_pickle``; turn damaged or unsafe checkpoints into a `CheckpointError` that names the file and the fix."""
    folder = Path(path)
    if folder.is_dir():
        refuse_pickle_only_folder(folder, allow_pickle)
    if not allow_pickle:
        kwargs = {**kwargs, "use_safetensors": True}
    try:
        return loader(path, *args, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        if isinstance(error, CheckpointError) or not _looks_damaged(error):
            raise
        raise CheckpointError(
            f"Could not read the hypernetwork weights in {path}: {error}. The file is truncated or corrupted "
            f"(for example an interrupted download or copy); download or save it again."
        ) from error


def refuse_pickle_only_folder(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose weights exist only as pickle files, unless the caller opted in."""
    has_safetensors = any(folder.glob("*.safetensors"))
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not has_safetensors and not allow_pickle:
        raise CheckpointError(
            f"{folder} holds only pickle-based weights ({', '.join(pickles)}). Unpickling can execute arbitrary code, "
            f"so peft-shine reads safetensors only. If you trust this file, pass allow_pickle=True, then save it "
            f"again with save_pretrained (which writes safetensors)."
        )


def _looks_damaged(error: Exception) -> bool:
    text = str(error).lower()
    markers = ("safetensor", "header", "deserializ", "incomplete", "invalid", "truncat", "unexpected end", "metadata")
    return any(marker in text for marker in markers)
