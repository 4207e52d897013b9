"""Sharing SHINE hypernetworks and generated adapters on the Hugging Face Hub.

* `push_hypernetwork` / `push_hypernetwork_folder`: ``config.json`` + safetensors weights + a SHINE model card
  (``library_name: peft-shine``, ``base_model_relation: adapter``) in one atomic commit.
* `push_adapter` / `push_adapter_folder`: a generated adapter as a standard peft LoRA repo (``adapter_config.json``
  + ``adapter_model.safetensors``) whose card records the hypernetwork repo and revision and the context's SHA-256
  (the context itself only with ``include_context=True``).
* `resolve_hub_revision`, `pull_hypernetwork`, `pull_adapter`, `download`: loading back, with clear errors.

The token comes from the usual places (the ``token`` argument, ``HF_TOKEN``, the stored ``hf auth login``) and is
never printed or logged. Hub and network errors become a `HubError` that says what to do; a failed push or pull
never modifies local files (pushes read them, pulls write into a temporary folder swapped in at the end).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)

from .hub_cards import hypernetwork_card_fields, render_adapter_card, render_hypernetwork_card
from .hub_pull import MAX_PULL_BYTES, PULL_PATTERNS, pull_size, verify_pulled
from .save_targets import TargetExistsError, guarded_directory, write_mode


if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

    from .modeling_shine import ShineModel

logger = logging.getLogger(__name__)

HYPERNETWORK_PATTERNS = ("config.json", "*.safetensors", "model.safetensors.index.json")
ADAPTER_PATTERNS = ("adapter_config.json", "adapter_model.safetensors")
STALE_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin")  # replaced by each push


class HubError(RuntimeError):
    """A push or pull failed; the message says why and what to do (check the repo id, log in, retry)."""


@dataclass(frozen=True)
class HubOrigin:
    """Where a hypernetwork came from on the Hub: repo id, the revision asked for and the commit it resolved to."""

    repo_id: str
    revision: str | None
    commit: str | None


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


# ---------------------------------------------------------------------------------------------------- errors
def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP clients huggingface_hub may use."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            errors.append(__import__(module).TransportError)
    return tuple(errors)


@contextlib.contextmanager
def hub_errors(action: str, repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub and network errors raised inside the block into a `HubError` saying what to do.

    ``action`` completes "Could not ..." (e.g. ``"push to"``); messages never contain the token.
    """
    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        yield
    except HubError:
        raise
    except RevisionNotFoundError as error:
        raise HubError(f"Could not {action} {where}: that revision does not exist. Check the branch, tag or "
                       f"commit sha.") from error
    except RepositoryNotFoundError as error:
        raise HubError(f"Could not {action} {where}: repository not found on {hf_constants.ENDPOINT}, or it is "
                       f"private and your token cannot see it. Check the repo id ('user/name') and that you are "
                       f"logged in ('hf auth login' or HF_TOKEN).") from error
    except HfHubHTTPError as error:
        raise HubError(_http_message(action, where, error)) from error
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, RevisionResolutionError) as error:
        raise HubError(f"Could not {action} {where}: {_unreachable_advice()}") from error
    except _transport_errors() as error:
        unchanged = ("nothing was committed (commits are atomic) and your local files are unchanged"
                     if action.startswith("push") else "your local files are unchanged")
        raise HubError(f"Could not {action} {where}: the connection to {hf_constants.ENDPOINT} failed "
                       f"({type(error).__name__}); {unchanged}. Check your connection and retry.") from error


def _unreachable_advice() -> str:
    """Why a file could not be found locally nor fetched, and what to do."""
    if hf_constants.HF_HUB_OFFLINE:
        return ("it is not in the local cache and offline mode is on (HF_HUB_OFFLINE=1). Download it once while "
                "online, or unset HF_HUB_OFFLINE.")
    return (f"it is not in the local cache and the Hub ({hf_constants.ENDPOINT}) could not be reached. Check your "
            f"connection and retry.")


def _http_message(action: str, where: str, error: HfHubHTTPError) -> str:
    """The advice for an HTTP error answer, by status code."""
    status = error.response.status_code if error.response is not None else None
    prefix = f"Could not {action} {where} (HTTP {status})"
    if status == 401:
        return (f"{prefix}: the Hub refused the credentials. Log in with 'hf auth login' or set HF_TOKEN to a "
                f"valid token.")
    if status == 403:
        return (f"{prefix}: your token may not write to this repo. Log in with a token that has write access to "
                f"this namespace ('hf auth login' or HF_TOKEN).")
    if status == 412:
        return f"{prefix}: the branch moved while uploading (a concurrent push). Retry the push."
    detail = getattr(error, "server_message", None) or type(error).__name__
    return f"{prefix}: {detail}. Retry later; if it persists, check the repo id and revision."


# ---------------------------------------------------------------------------------------------------- push
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
        raise ValueError(f"{folder} is not a SHINE hypernetwork (model_type {config.get('model_type')!r}).")
    files = _matching_files(folder, HYPERNETWORK_PATTERNS)
    if not any(name.endswith(".safetensors") for name in files):
        raise FileNotFoundError(f"No safetensors weights in {folder}; save the model with save_pretrained.")
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
        raise ValueError("The hypernetwork's Hub repo is unknown (it was not loaded from or pushed to the Hub): "
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
        raise ValueError("include_context=True needs the context text: pass context=.")
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
        raise ValueError(f"{folder / 'adapter_config.json'} names no base model (base_model_name_or_path): pass its Hub "
                         f"id (model_card_fields={{'base_model': ...}}, or --base-model on the command line).")
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


# ---------------------------------------------------------------------------------------------------- pull
def resolve_hub_revision(repo_id: str, revision: str | None = None, *, token: bool | str | None = None) -> str:
    """Resolve ``revision`` (branch, tag, sha; default ``main``) of a Hub repo to its commit, once per load.

    Returns a ``huggingface_hub.ResolvedRevision`` (a str equal to ``revision``, ``.resolved`` = the commit) that
    pins every later download of the load to one commit; honours offline mode (answered from the cache).
    """
    api = HfApi(token=token)
    if not hasattr(api, "resolve_revision"):  # huggingface_hub < 2: transformers resolves it on its own
        return revision
    with hub_errors("load", repo_id, revision):
        return api.resolve_revision(repo_id, revision=revision, token=token,
                                    local_files_only=hf_constants.HF_HUB_OFFLINE)


def hub_origin(repo_id: str, revision: str | None) -> HubOrigin:
    """The `HubOrigin` of a load from ``repo_id`` at a revision returned by `resolve_hub_revision`."""
    return HubOrigin(repo_id, getattr(revision, "initial", revision) or "main", getattr(revision, "resolved", None))


def pull_hypernetwork(repo_id: str, *, revision: str | None = None, base_model: PreTrainedModel | None = None,
                      **kwargs: Any) -> ShineModel:
    """Load a hypernetwork from the Hub (same as ``AutoShineModel.from_pretrained``; see there)."""
    from .auto import AutoShineModel

    return AutoShineModel.from_pretrained(repo_id, base_model=base_model, revision=revision, **kwargs)


def pull_adapter(repo_id: str, base_model: PreTrainedModel, *, revision: str | None = None,
                 adapter_name: str = "default", token: bool | str | None = None) -> PeftModel:
    """Load a pushed adapter onto ``base_model`` as a `PeftModel` (plain peft; clear errors)."""
    from peft import PeftModel

    resolved = resolve_hub_revision(repo_id, revision, token=token)
    with hub_errors("load", repo_id, revision):
        return PeftModel.from_pretrained(base_model, repo_id, revision=resolved, adapter_name=adapter_name,
                                         token=token)


def download(repo_id: str, output: str | Path | None = None, *, revision: str | None = None,
             token: bool | str | None = None, overwrite: bool = False,
             max_bytes: int = MAX_PULL_BYTES) -> tuple[Path, str, HubOrigin]:
    """Download a hypernetwork or adapter repo into ``output``: only the files its checkpoint needs (configs,
    safetensors weights, the card; `peft_shine.hub_pull`), at most ``max_bytes`` in all (checked before anything is
    downloaded), verified (configs parse, every weights file is present and readable) before anything is written.

    Files go through the Hub cache (so offline mode works with a warm cache) and are copied into a temporary folder
    that replaces ``output`` at the end: a failed download leaves an existing ``output`` unchanged. An existing file
    is never replaced; a non-empty folder only with ``overwrite=True``, and then only a previous download is replaced
    whole: in any other folder the downloaded files are written and the rest is kept (`peft_shine.save_targets`).
    Returns ``(path, kind, origin)`` with ``kind`` one of ``"hypernetwork"``, ``"adapter"`` or ``"model"``.
    """
    from huggingface_hub import snapshot_download

    output = Path(output if output is not None else repo_id.split("/")[-1])
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise TargetExistsError(f"{output} exists and is not empty; choose another output folder, or pass "
                                f"overwrite=True (--overwrite on the command line).")
    write_mode(output, overwrite=overwrite, what="download")  # refuse a file or a foreign folder before any request
    resolved = resolve_hub_revision(repo_id, revision, token=token)
    with hub_errors("download", repo_id, revision):
        if not hf_constants.HF_HUB_OFFLINE:  # offline, the files come from the cache
            pull_size(repo_id, getattr(resolved, "resolved", None) or resolved, token, max_bytes)
        snapshot = Path(snapshot_download(repo_id, revision=resolved, allow_patterns=PULL_PATTERNS, token=token))
    kind = verify_pulled(snapshot, repo_id)
    with guarded_directory(output, overwrite=overwrite, what="download") as tmp:
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


# ---------------------------------------------------------------------------------------------------- helpers
def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not {what}: {path.name} is missing.")
    return json.loads(path.read_text(encoding="utf-8"))


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def _matching_files(folder: Path, patterns: tuple[str, ...]) -> dict[str, Path]:
    """The top-level files of ``folder`` matching ``patterns``, by name."""
    return {path.name: path for path in sorted(folder.iterdir()) if path.is_file() and _matches(path.name, patterns)}
