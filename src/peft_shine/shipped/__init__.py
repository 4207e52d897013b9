"""The shipped default hypernetwork (package data: ``shine-smollm2-135m-instruct/`` next to this file), and the one
loader every front end uses: a named checkpoint, else the shipped one, else an untrained one, always saying which.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hub_constants
from transformers import AutoConfig

from peft_shine.auto import AutoShineModel
from peft_shine.errors import CheckpointError, ConfigError, MissingFileError, ShineError
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.modeling_shine import ShineModel
from peft_shine.storage.base_models import DEFAULT_BASE_MODEL, resolve_base_model_path


SHIPPED_NAME = "shine-smollm2-135m-instruct"
SHIPPED_DIR = Path(__file__).resolve().parent / SHIPPED_NAME
DEFAULT_HUB_REPO = f"peft-shine/{SHIPPED_NAME}"  # where `shine push hypernetwork` publishes the shipped checkpoint
logger = logging.getLogger(__name__)


def shipped_checkpoint() -> Path | None:
    """The shipped default checkpoint folder: ``$PEFT_SHINE_DEFAULT_HYPERNETWORK`` if set, else the packaged one;
    ``None`` when the chosen folder lacks ``config.json`` or ``model.safetensors``."""
    path = Path(os.environ.get("PEFT_SHINE_DEFAULT_HYPERNETWORK") or SHIPPED_DIR)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return path
    return None


@dataclass
class LoadedHypernetwork:
    """A hypernetwork with what a front end tells its user about it."""

    model: ShineModel
    label: str  # e.g. "trained hypernetwork shine-smollm2-135m-instruct" or "UNTRAINED hypernetwork ..."
    trained: bool
    hub_id: str | None = None  # the Hub repo it came from (adapter cards cite it), None for local folders
    origin: str = ""  # where it came from, in words, with the reason for a fallback (the demo shows it)


def _source_config(source: str, local: Path):
    """The config of a folder or Hub repo ``source``; a path that is no folder, or a repo offline mode cannot find,
    raises `MissingFileError` saying so (not "could not connect to huggingface.co")."""
    if local.exists() and not local.is_dir():
        raise ConfigError(f"{source} is a file; pass a hypernetwork folder (save_pretrained output) or a Hub "
                          f"repo id.")
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    if not local.is_dir() and looks_like_path:
        raise MissingFileError(f"no such folder {source}; pass an existing hypernetwork folder or a Hub repo id "
                               f"(org/name).")
    try:
        return AutoConfig.from_pretrained(resolve_base_model_path(source))
    except OSError as error:
        if local.is_dir() or not hub_constants.HF_HUB_OFFLINE:
            raise
        raise MissingFileError(f"{source} is not a local folder, and offline (HF_HUB_OFFLINE=1) the Hub cache holds "
                               f"no repo of that name; pass an existing folder, or go online once to download "
                               f"it.") from error


def load_hypernetwork(source: str | os.PathLike | None = None, *, base_model: str = DEFAULT_BASE_MODEL,
                      allow_untrained: bool = True, hub_repo: str | None = None,
                      **base_options: Any) -> LoadedHypernetwork:
    """Load ``source`` (a SHINE checkpoint folder or Hub id); without one, ``hub_repo`` (through the Hub cache)
    if given and reachable, else the shipped default; without that, an untrained hypernetwork for
    ``base_model``. A ``source`` that is a plain causal LM gives an untrained hypernetwork for it when
    ``allow_untrained`` (else a `CheckpointError`). The label says which it is. ``base_options`` (``dtype``,
    ``device_map``, ...) reach the base LM (see `peft_shine.loading`)."""
    packaged = "the copy packaged with peft-shine"
    if source is None and hub_repo:
        try:
            return LoadedHypernetwork(AutoShineModel.from_pretrained(hub_repo, **base_options),
                                      f"trained hypernetwork {hub_repo}", trained=True, hub_id=hub_repo,
                                      origin=f"the Hub repo {hub_repo}")
        except (ShineError, OSError) as error:  # unreachable Hub, missing repo: the packaged copy still works
            logger.warning("Could not load %s (%s); using the packaged hypernetwork instead.", hub_repo, error)
            packaged += f", because the Hub repo {hub_repo} could not be loaded ({type(error).__name__})"
    if source is None:
        shipped = shipped_checkpoint()
        if shipped is not None:
            return LoadedHypernetwork(AutoShineModel.from_pretrained(str(shipped), **base_options),
                                      f"trained hypernetwork {shipped.name}", trained=True, origin=packaged)
    else:
        source = str(source)
        local = Path(source).expanduser()
        config = _source_config(source, local)
        if config.model_type == ShineConfig.model_type:
            hub_id = None if local.is_dir() else source
            return LoadedHypernetwork(AutoShineModel.from_pretrained(source, **base_options), f"trained hypernetwork {local.name}",
                                      trained=True, hub_id=hub_id,
                                      origin="a local folder" if hub_id is None else f"the Hub repo {hub_id}")
        if not allow_untrained:
            raise CheckpointError(f"{source} is a {config.model_type} model, not a SHINE hypernetwork checkpoint.")
        base_model = source
    model = ShineModel.from_base_model(base_model, **base_options)
    return LoadedHypernetwork(model, f"UNTRAINED hypernetwork for {base_model} (randomly initialised: adapters "
                                     f"carry nothing of their context)", trained=False)
