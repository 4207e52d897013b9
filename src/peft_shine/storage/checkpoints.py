"""Loading hypernetwork checkpoints safely: safetensors only by default, clear errors for damaged files."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from safetensors import SafetensorError

from peft_shine.errors import CheckpointError


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")



def load_checkpoint_safely(loader: Callable, path: str | os.PathLike, args: tuple, kwargs: dict[str, Any],
                           allow_pickle: bool = False, new_tensors: tuple[str, ...] = ()):
    """Call ``loader(path, *args, **kwargs)`` (a `from_pretrained`) reading safetensors only unless
    ``allow_pickle``; turn damaged or unsafe checkpoints into a `CheckpointError` that names the file and the fix.

    Loading is strict: a hypernetwork tensor missing from the file, an unexpected one, one of another shape or one
    holding NaN/Inf raises (naming it) instead of being left at its random initialisation or poisoning every
    logit. The one exception: tensors of a feature the checkpoint was saved without (key prefixes
    ``new_tensors``) are initialised so the function is unchanged
    (`hypernetwork.lora_head.GeneratedLoraHead.preserve_function`). A folder whose ``config.json`` is not a JSON
    object, or that holds both a single weights file and a shard index (a stale file: which one is current?), is
    refused before transformers reads it (`check_checkpoint_folder`). A Hub repo is listed first: one holding only
    pickle weights is refused before transformers is called, and the revision is pinned to its commit, so
    transformers' automatic safetensors conversion (a pull request opened on the repo with your token) never starts.
    """
    folder = Path(path)
    if folder.is_dir():
        check_checkpoint_folder(folder)
        refuse_pickle_only_folder(folder, allow_pickle)
    elif not allow_pickle:
        kwargs = {**kwargs, "revision": refuse_pickle_only_repo(str(path), kwargs.get("revision"),
                                                                kwargs.get("token"))}
    if not allow_pickle:
        kwargs = {**kwargs, "use_safetensors": True}
    try:  # shapes are compared by `_check_complete`, which names the tensor (transformers' own error does not)
        with _quiet_loading_report():
            model, info = loader(path, *args, **{**kwargs, "output_loading_info": True,
                                                 "ignore_mismatched_sizes": True})
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        if isinstance(error, CheckpointError) or not _looks_damaged(error):
            raise
        raise CheckpointError(
            f"Could not read the hypernetwork weights in {path}: {error}. The file is truncated or corrupted "
            f"(for example an interrupted download or copy); download or save it again."
        ) from error
    missing = [key for key in info.get("missing_keys", ()) if key.startswith(new_tensors)] if new_tensors else []
    _check_complete(path, {**info, "missing_keys": [k for k in info.get("missing_keys", ()) if k not in missing]})
    if missing:
        model.generated_head.preserve_function(missing)
    check_finite(model.state_dict(), f"The hypernetwork weights in {path}")
    return model


@contextmanager
def _quiet_loading_report() -> Iterator[None]:
    """Silence transformers' loading report (logged by ``modeling_utils``) while loading: `_check_complete` raises
    its own, clearer error naming the tensors. The tensor-parallel plan check is silenced too: transformers runs it
    only while ``modeling_utils``' level is WARNING or above, and for a model without a plan (the hypernetwork) it
    reports every tensor as "not sharded"."""
    names = ("transformers.modeling_utils", "transformers.utils.loading_report", "transformers.distributed.tensor_parallel")
    loggers = [logging.getLogger(name) for name in names]
    previous = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous):
            logger.setLevel(level)


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise `CheckpointError` naming the first floating-point tensor of ``tensors`` that holds NaN or Inf."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all():
            kind = "nan" if torch.isnan(tensor).any() else "inf"
            raise CheckpointError(
                f"{what}: tensor {name} holds non-finite values ({kind}); every output would be NaN. The training "
                f"diverged or the file is corrupted: use an earlier checkpoint, or train again with a lower "
                f"learning rate."
            )


def check_checkpoint_folder(folder: Path) -> None:
    """Refuse a checkpoint folder whose ``config.json`` is not a JSON object, that also holds a peft adapter, or
    that holds both a single weights file and a shard index (a stale file of an earlier save: transformers would
    silently read one of them)."""
    config = folder / "config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise CheckpointError(f"{config} is not valid UTF-8 JSON ({error}); save the checkpoint again.") from None
        if not isinstance(value, dict):
            raise CheckpointError(f"{config} holds a JSON {type(value).__name__}, not a JSON object of config fields; "
                                  f"the file was replaced or damaged. Save the checkpoint again.")
    if config.is_file() and (folder / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{folder} holds a peft adapter (adapter_config.json) beside the hypernetwork: transformers would try to "
            f"load it onto the hypernetwork. Move adapter_config.json and adapter_model.safetensors to a folder of "
            f"their own."
        )
    if (folder / "model.safetensors").is_file() and (folder / "model.safetensors.index.json").is_file():
        raise CheckpointError(
            f"{folder} holds both model.safetensors and model.safetensors.index.json (shards): one is left over from "
            f"an earlier save and it is unclear which is current. Delete the stale one, or save the checkpoint again "
            f"(peft-shine saves remove it)."
        )


def _check_complete(path: str | os.PathLike, info: dict[str, Any]) -> None:
    """Raise unless every hypernetwork tensor was read from the checkpoint, with its shape, and nothing else."""
    missing = sorted(key for key in info.get("missing_keys", ()) if not key.startswith("base_lm."))
    unexpected = sorted(info.get("unexpected_keys", ()))
    mismatched = sorted(f"{entry[0]} {list(entry[1])} instead of {list(entry[2])}" if len(entry) == 3 else str(entry[0])
                        for entry in info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"The hypernetwork weights in {path} do not match its config.json: missing {missing[:4]} "
            f"({len(missing)}), unexpected {unexpected[:4]} ({len(unexpected)}), other shape {mismatched[:4]} "
            f"({len(mismatched)}). Missing tensors would stay random: the config or the weights were changed or "
            f"come from different models; save the checkpoint again from one model."
        )


def refuse_pickle_only_repo(repo_id: str, revision: str | None, token: Any = None) -> str | None:
    """List a Hub repo at ``revision`` and refuse one whose weights are only pickle files; return the revision
    pinned to its commit sha when the Hub (or the cache) answered, else ``revision`` unchanged."""
    if hf_constants.HF_HUB_OFFLINE:
        return revision
    try:
        info = HfApi(token=token).model_info(repo_id, revision=getattr(revision, "resolved", None) or revision,
                                             files_metadata=False)
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError):
        return revision  # transformers reports a missing repo or revision with its own message
    names = [sibling.rfilename for sibling in info.siblings or []]
    pickles = sorted(name for name in names if name.endswith(PICKLE_SUFFIXES))
    if pickles and not any(name.endswith(".safetensors") for name in names):
        raise CheckpointError(
            f"{repo_id}: this repository holds only pickle weights ({', '.join(pickles)}). Unpickling can execute "
            f"arbitrary code, so peft-shine reads safetensors only and asks for no conversion. If you trust it, "
            f"pass allow_pickle=True, then push it again with save_pretrained / push_to_hub (safetensors)."
        )
    return info.sha or revision


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
