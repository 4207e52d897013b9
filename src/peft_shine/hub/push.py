"""Pushing hypernetworks and generated adapters to the Hub, each in one atomic commit with a SHINE model card.

* `push_hypernetwork` / `push_hypernetwork_folder`: ``config.json`` + safetensors weights + a SHINE model card
  (``library_name: peft-shine``, ``base_model_relation: adapter``).
* `push_adapter` / `push_adapter_folder`: a generated adapter as a standard peft LoRA repo (``adapter_config.json``
  + ``adapter_model.safetensors``) whose card records the hypernetwork repo and revision and the context's SHA-256
  (the context itself only with ``include_context=True``).

The token comes from the usual places (the ``token`` argument, ``HF_TOKEN``, the stored ``hf auth login``) and is
never printed or logged; a failed push never modifies local files (pushes only read them).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard

from peft_shine.errors import ConfigError, MissingFileError
from peft_shine.hub.cards import hypernetwork_card_fields, render_adapter_card, render_hypernetwork_card
from peft_shine.storage.revisions import HubOrigin, hub_errors


if TYPE_CHECKING:
    from peft_shine.modeling_shine import ShineModel

logger = logging.getLogger(__name__)

HYPERNETWORK_PATTERNS = ("config.json", "*.safetensors", "model.safetensors.index.json")
ADAPTER_PATTERNS = ("adapter_config.json", "adapter_model.safetensors")
STALE_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin")  # replaced by each push


class PushOptions(TypedDict, total=False):
    """Options shared by every push.

    Keys: ``private`` (for a new repo; default: the account's default), ``revision`` (a branch, created from
    ``main`` when missing), ``commit_message``, ``commit_description``, ``token`` (default: ``HF_TOKEN`` or the stored
    login), ``create_pr`` (open a pull request instead of committing).
    """

    private: bool | None
    revision: str | None
    commit_message: str | None
    commit_description: str | None
    token: bool | str | None
    create_pr: bool



def push_hypernetwork(shine: ShineModel, repo_id: str, *, model_card_fields: Mapping[str, Any] | None = None,
                      **options: Unpack[PushOptions]) -> CommitInfo:
    """Push a hypernetwork (config + safetensors, never the base LM) with a SHINE model card.

    ``model_card_fields`` go to `render_hypernetwork_card` (``license``, ``datasets``, ``tags``, ``training``,
    ``eval_results``, ...). Afterwards ``shine.hub_origin`` names the pushed commit, so adapters pushed later from
    this model record it. Returns the `CommitInfo` (``.oid``, ``.commit_url``; a str equal to the commit URL).
    """
    with tempfile.TemporaryDirectory(prefix="shine-push-") as tmp:
        shine.save_pretrained(tmp)
        info = push_hypernetwork_folder(tmp, repo_id, model_card_fields=model_card_fields, **options)
    if not options.get("create_pr"):
        shine.hub_origin = HubOrigin(info.repo_url.repo_id, options.get("revision") or "main", info.oid)
    return info


def push_hypernetwork_folder(folder: str | Path, repo_id: str, *, model_card_fields: Mapping[str, Any] | None = None,
                             **options: Unpack[PushOptions]) -> CommitInfo:
    """Push a saved hypernetwork folder (``save_pretrained`` output) without loading it; the folder is only read."""
    folder = Path(folder)
    config = _read_json(folder / "config.json", "a hypernetwork folder (save_pretrained output)")
    if config.get("model_type") != "shine":
        raise ConfigError(f"{folder} is not a SHINE hypernetwork (model_type {config.get('model_type')!r}).")
    files = _matching_files(folder, HYPERNETWORK_PATTERNS)
    if not any(name.endswith(".safetensors") for name in files):
        raise MissingFileError(f"No safetensors weights in {folder}; save the model with save_pretrained.")
    fields = hypernetwork_card_fields(config, model_card_fields)
    message = options.pop("commit_message", None) or "Upload SHINE hypernetwork"
    return _push_files(repo_id, files, render_hypernetwork_card, fields, commit_message=message, **options)


def push_adapter(shine: ShineModel, adapter_name: str, repo_id: str, *, hypernetwork_repo: str | None = None,
                 hypernetwork_revision: str | None = None, context: str | None = None, include_context: bool = False,
                 model_card_fields: Mapping[str, Any] | None = None, **options: Unpack[PushOptions]) -> CommitInfo:
    """Push a generated adapter as a standard peft LoRA repo (loads with ``PeftModel.from_pretrained(base, id)``).

    The card records the hypernetwork repo and commit (by default ``shine.hub_origin``: where the model was loaded
    from or last pushed to), the context's SHA-256 and the generation time. The context text is published only
    with ``include_context=True`` and ``context=`` (checked against the recorded hash).
    """
    info = getattr(shine, "adapter_info", {}).get(adapter_name, {})
    origin: HubOrigin | None = getattr(shine, "hub_origin", None)
    if hypernetwork_repo is None and origin is None:
        raise ConfigError("The hypernetwork's Hub repo is unknown (it was not loaded from or pushed to the Hub): "
                          "pass hypernetwork_repo= (and hypernetwork_revision=), or push the hypernetwork first.")
    if hypernetwork_repo is None:
        hypernetwork_repo, hypernetwork_revision = origin.repo_id, hypernetwork_revision or origin.commit
    with tempfile.TemporaryDirectory(prefix="shine-push-") as tmp:
        folder = shine.save_adapter(Path(tmp) / "adapter", adapter_name)
        return push_adapter_folder(
            folder, repo_id, hypernetwork_repo=hypernetwork_repo, hypernetwork_revision=hypernetwork_revision,
            context=context, include_context=include_context,
            model_card_fields={"base_model": shine.config.base_model_name_or_path,
                               "context_sha256": info.get("context_sha256"),
                               "generation_seconds": info.get("generation_seconds"), **(model_card_fields or {})},
            **options)


def push_adapter_folder(folder: str | Path, repo_id: str, *, hypernetwork_repo: str,
                        hypernetwork_revision: str | None = None, context: str | None = None,
                        include_context: bool = False, model_card_fields: Mapping[str, Any] | None = None,
                        **options: Unpack[PushOptions]) -> CommitInfo:
    """Push a saved adapter folder (``save_adapter`` output) with a SHINE adapter card; the folder is only read.

    ``model_card_fields`` may add ``context_sha256``, ``generation_seconds``, ``generated_at``, ``license``, ``tags``.
    """
    folder = Path(folder)
    config = _read_json(folder / "adapter_config.json", "an adapter folder (save_adapter output)")
    if include_context and context is None:
        raise ConfigError("include_context=True needs the context text: pass context=.")
    fields = {
        "base_model": config.get("base_model_name_or_path"),
        "base_model_revision": config.get("revision"),
        "hypernetwork_repo": hypernetwork_repo,
        "hypernetwork_revision": hypernetwork_revision,
        "lora_rank": config.get("r"),
        "target_modules": sorted(config.get("target_modules") or []),
        "context": context,
        "include_context": include_context,
        **(model_card_fields or {}),
    }
    if not fields["base_model"]:
        raise ConfigError(f"{folder / 'adapter_config.json'} names no base model (base_model_name_or_path): pass its "
                          f"Hub id (model_card_fields={{'base_model': ...}}, or --base-model on the command line).")
    message = options.pop("commit_message", None) or "Upload LoRA adapter generated by SHINE"
    return _push_files(repo_id, _matching_files(folder, ADAPTER_PATTERNS), render_adapter_card, fields,
                       commit_message=message, **options)


def _push_files(repo_id: str, files: dict[str, Path], render_card: Callable[..., ModelCard],
                card_fields: dict[str, Any], *,
                commit_message: str, **options: Unpack[PushOptions]) -> CommitInfo:
    """Create the repo (and branch), then one commit: ``files`` + the rendered README, stale weights deleted."""
    revision, token = options.get("revision"), options.get("token")
    api = HfApi(token=token)
    card = render_card(repo_id=repo_id, **card_fields)  # before any request: bad fields fail early
    with hub_errors("push to", repo_id, revision):
        created = api.create_repo(repo_id, private=options.get("private"), exist_ok=True).repo_id
        if created != repo_id:  # a bare name was put in the token owner's namespace
            repo_id, card = created, render_card(repo_id=created, **card_fields)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        existing = api.list_repo_files(repo_id, revision=revision)
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in files.items()]
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()))
        operations += [CommitOperationDelete(path_in_repo=name) for name in existing
                       if name not in files and _matches(name, STALE_WEIGHT_PATTERNS)]
        info = api.create_commit(repo_id, operations, commit_message=commit_message,
                                 commit_description=options.get("commit_description"), revision=revision,
                                 create_pr=options.get("create_pr", False))
    logger.info("Pushed %s to %s (commit %s)", ", ".join(sorted(files)), repo_id, info.oid)
    return info



# ---------------------------------------------------------------------------------------------------- helpers
def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"{path.parent} is not {what}: {path.name} is missing.")
    return json.loads(path.read_text(encoding="utf-8"))


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _matching_files(folder: Path, patterns: tuple[str, ...]) -> dict[str, Path]:
    """The top-level files of ``folder`` matching ``patterns``, by name."""
    return {path.name: path for path in sorted(folder.iterdir()) if path.is_file() and _matches(path.name, patterns)}
