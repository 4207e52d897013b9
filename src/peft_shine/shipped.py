"""Where the shipped default hypernetwork lives (``models/shine-smollm2-135m-instruct`` in the repository)."""

from __future__ import annotations

import os
from pathlib import Path


SHIPPED_NAME = "shine-smollm2-135m-instruct"


def shipped_checkpoint() -> Path | None:
    """The shipped default checkpoint folder, if present: ``$PEFT_SHINE_DEFAULT_HYPERNETWORK``, else
    ``models/<name>`` next to the source tree (editable installs), else ``None``."""
    candidates = [os.environ.get("PEFT_SHINE_DEFAULT_HYPERNETWORK")]
    candidates.append(str(Path(__file__).resolve().parents[2] / "models" / SHIPPED_NAME))
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return path
    return None
