"""What ``shine pull`` downloads, how much of it, and the checks it passes before the pull is reported done.

Only the files a checkpoint needs are fetched (:data:`PULL_PATTERNS`: configs, safetensors weights and the card),
never arbitrary JSON or Markdown; their total size is checked against a limit before any byte is downloaded; and
the downloaded folder must hold a parseable config and every weights file it needs, each with a readable header.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any


PULL_PATTERNS = ["config.json", "adapter_config.json", "model.safetensors", "model.safetensors.index.json",
                 "model-*-of-*.safetensors", "adapter_model.safetensors", "README.md"]
MAX_PULL_BYTES = 20 * 2**30  # 20 GiB; `download(max_bytes=...)` changes it


class PullError(OSError):
    """A pulled repository is not a complete hypernetwork or adapter; nothing was written."""


def pull_size(repo_id: str, revision: str | None, token: Any, max_bytes: int) -> int:
    """Total size of the files `PULL_PATTERNS` selects in the repo; raise `PullError` above ``max_bytes``."""
    from huggingface_hub import HfApi

    info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []
             if any(fnmatch.fnmatch(s.rfilename, pattern) for pattern in PULL_PATTERNS)}
    total = sum(sizes.values())
    if total > max_bytes:
        raise PullError(f"{repo_id} would download {total / 2**30:.1f} GiB ({len(sizes)} files), more than the "
                        f"{max_bytes / 2**30:.1f} GiB limit; nothing was downloaded. Pass max_bytes= to allow it.")
    return total


def _read_json(path: Path, repo_id: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PullError(f"{repo_id}: {path.name} is not valid JSON ({error}); nothing was written.") from error
    if not isinstance(value, dict):
        raise PullError(f"{repo_id}: {path.name} does not hold a JSON object; nothing was written.")
    return value


def _check_weights(folder: Path, names: list[str], repo_id: str) -> None:
    from safetensors import SafetensorError, safe_open

    for name in names:
        if not (folder / name).is_file():
            raise PullError(f"{repo_id} lacks {name}, which its checkpoint needs; nothing was written. Push the "
                            f"complete folder (save_pretrained / save_adapter output) again.")
        try:
            with safe_open(str(folder / name), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError, ValueError) as error:
            raise PullError(f"{repo_id}: {name} is not a readable safetensors file ({error}); nothing was "
                            f"written.") from error


def verify_pulled(folder: Path, repo_id: str) -> str:
    """Check a downloaded snapshot and return its kind: ``"adapter"``, ``"hypernetwork"`` or ``"model"``."""
    if (folder / "adapter_config.json").is_file():
        _read_json(folder / "adapter_config.json", repo_id)
        _check_weights(folder, ["adapter_model.safetensors"], repo_id)
        return "adapter"
    if not (folder / "config.json").is_file():
        raise PullError(f"{repo_id} holds neither config.json nor adapter_config.json: it is not a hypernetwork or "
                        f"an adapter; nothing was written.")
    config = _read_json(folder / "config.json", repo_id)
    index = folder / "model.safetensors.index.json"
    weights = (sorted(set(_read_json(index, repo_id).get("weight_map", {}).values())) if index.is_file()
               else ["model.safetensors"])
    _check_weights(folder, weights, repo_id)
    if config.get("model_type") == "shine":
        from .configuration_shine import ShineConfig

        try:
            ShineConfig.from_dict(config)
        except (ValueError, TypeError) as error:
            raise PullError(f"{repo_id}: its config.json is not a valid SHINE config ({error}); nothing was "
                            f"written.") from error
        return "hypernetwork"
    return "model"
