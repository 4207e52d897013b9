"""Loading hypernetworks and adapters back from the Hub, and ``shine pull``: what it downloads, how much of it,
and the checks it passes before a pull is reported done.

Only the files a checkpoint needs are fetched (`PULL_PATTERNS`: configs, safetensors weights and the card), never
arbitrary JSON or Markdown; their total size is checked against a limit before any byte is downloaded; the
downloaded folder must hold a parseable config and every weights file it needs, and every downloaded file (in
sub-folders too) must parse (JSON) or have a readable header (safetensors); it is written into place only then (a
failed pull leaves local files unchanged).
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub import constants as hf_constants
from peft import PeftModel
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel

from peft_shine.auto import AutoShineModel
from peft_shine.errors import PullError
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.modeling_shine import ShineModel
from peft_shine.storage.revisions import HubOrigin, hub_errors, hub_origin, resolve_hub_revision
from peft_shine.storage.save_targets import TargetExistsError, guarded_directory, write_mode


PULL_PATTERNS = ["config.json", "adapter_config.json", "model.safetensors", "model.safetensors.index.json",
                 "model-*-of-*.safetensors", "adapter_model.safetensors", "README.md"]
MAX_PULL_BYTES = 20 * 2**30  # 20 GiB; `download(max_bytes=...)` changes it



def readable_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that keeps it at one or more (``"1,000 bytes"``, ``"339.1 KiB"``)."""
    if size < 1024:
        return f"{size:,} bytes"
    for unit in ("KiB", "MiB"):
        size /= 1024
        if size < 1024:
            return f"{size:,.1f} {unit}"
    return f"{size / 1024:,.1f} GiB"


def pull_size(repo_id: str, revision: str | None, token: Any, max_bytes: int) -> int:
    """Total size of the files `PULL_PATTERNS` selects in the repo; raise `PullError` above ``max_bytes``."""
    info = HfApi(token=token).model_info(repo_id, revision=revision, files_metadata=True)
    sizes = {s.rfilename: s.size or 0 for s in info.siblings or []
             if any(fnmatch.fnmatch(s.rfilename, pattern) for pattern in PULL_PATTERNS)}
    total = sum(sizes.values())
    if total > max_bytes:
        raise PullError(f"{repo_id} would download {readable_size(total)} ({len(sizes)} files), more than the "
                        f"{readable_size(max_bytes)} limit; nothing was downloaded. Pass max_bytes= to allow it.")
    return total


def _read_json(path: Path, repo_id: str, name: str | None = None) -> dict:
    name = name or path.name
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PullError(f"{repo_id}: {name} is not valid JSON ({error}); nothing was written.") from error
    if not isinstance(value, dict):
        raise PullError(f"{repo_id}: {name} does not hold a JSON object; nothing was written.")
    return value


def _check_weights(folder: Path, names: list[str], repo_id: str) -> None:
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


def _check_every_file(folder: Path, repo_id: str) -> None:
    """Every downloaded file, in sub-folders too, passes the checks of its kind: JSON parses, safetensors reads."""
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.suffix == ".json":
            _read_json(path, repo_id, name)
        elif path.suffix == ".safetensors":
            _check_weights(folder, [name], repo_id)


def verify_pulled(folder: Path, repo_id: str) -> str:
    """Check a downloaded snapshot and return its kind: ``"adapter"``, ``"hypernetwork"`` or ``"model"``."""
    _check_every_file(folder, repo_id)
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
        try:
            ShineConfig.from_dict(config)
        except (ValueError, TypeError) as error:
            raise PullError(f"{repo_id}: its config.json is not a valid SHINE config ({error}); nothing was "
                            f"written.") from error
        return "hypernetwork"
    return "model"


def pull_hypernetwork(repo_id: str, *, revision: str | None = None, base_model: PreTrainedModel | None = None,
                      **kwargs: Any) -> ShineModel:
    """Load a hypernetwork from the Hub (same as ``AutoShineModel.from_pretrained``; see there)."""
    return AutoShineModel.from_pretrained(repo_id, base_model=base_model, revision=revision, **kwargs)


def pull_adapter(repo_id: str, base_model: PreTrainedModel, *, revision: str | None = None,
                 adapter_name: str = "default", token: bool | str | None = None) -> PeftModel:
    """Load a pushed adapter onto ``base_model`` as a `PeftModel` (plain peft; clear errors)."""
    resolved = resolve_hub_revision(repo_id, revision, token=token)
    with hub_errors("load", repo_id, revision):
        return PeftModel.from_pretrained(base_model, repo_id, revision=resolved, adapter_name=adapter_name,
                                         token=token)


def download(repo_id: str, output: str | Path | None = None, *, revision: str | None = None,
             token: bool | str | None = None, overwrite: bool = False,
             max_bytes: int = MAX_PULL_BYTES) -> tuple[Path, str, HubOrigin]:
    """Download a hypernetwork or adapter repo into ``output``: only the files its checkpoint needs (configs,
    safetensors weights, the card; `PULL_PATTERNS`), at most ``max_bytes`` in all (checked before anything is
    downloaded), verified (configs parse, every weights file is present and readable) before anything is written.

    Files go through the Hub cache (so offline mode works with a warm cache) and are copied into a temporary folder
    that replaces ``output`` at the end: a failed download leaves an existing ``output`` unchanged. An existing file
    is never replaced; a non-empty folder only with ``overwrite=True``, and then only a previous download is replaced
    whole: in any other folder the downloaded files are written and the rest is kept (`peft_shine.storage.save_targets`).
    Returns ``(path, kind, origin)`` with ``kind`` one of ``"hypernetwork"``, ``"adapter"`` or ``"model"``.
    """
    output = Path(output if output is not None else repo_id.split("/")[-1])
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise TargetExistsError(f"{output} exists and is not empty; choose another output folder, or pass "
                                f"overwrite=True (--overwrite on the command line).")
    # refuse a file or a foreign folder before any request
    write_mode(output, overwrite=overwrite, what="download", kind="download")
    resolved = resolve_hub_revision(repo_id, revision, token=token)
    with hub_errors("download", repo_id, revision):
        if not hf_constants.HF_HUB_OFFLINE:  # offline, the files come from the cache
            pull_size(repo_id, getattr(resolved, "resolved", None) or resolved, token, max_bytes)
        snapshot = Path(snapshot_download(repo_id, revision=resolved, allow_patterns=PULL_PATTERNS, token=token))
    kind = verify_pulled(snapshot, repo_id)
    with guarded_directory(output, overwrite=overwrite, what="download", kind="download") as tmp:
        for source in sorted(snapshot.rglob("*")):
            if source.is_file():
                (tmp / source.relative_to(snapshot)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, tmp / source.relative_to(snapshot))
    return output, kind, hub_origin(repo_id, resolved)


def repo_kind(folder: str | Path) -> str:
    """``"hypernetwork"`` (a SHINE config), ``"adapter"`` (a peft adapter) or ``"model"`` (anything else)."""
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    config = folder / "config.json"
    if config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "shine":
        return "hypernetwork"
    return "model"
