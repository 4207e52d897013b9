"""`AutoShineModel` and the transformers Auto-class registrations (done on ``import peft_shine``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel, PreTrainedModel

from peft_shine.errors import ArgumentError, CheckpointError
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.modeling_shine import ShineModel
from peft_shine.storage.base_models import resolve_base_model_path
from peft_shine.storage.revisions import hub_origin, resolve_hub_revision


AutoConfig.register(ShineConfig.model_type, ShineConfig, exist_ok=True)
AutoModel.register(ShineConfig, ShineModel, exist_ok=True)

logger = logging.getLogger(__name__)
_MODEL_CLASSES: dict[str, type[ShineModel]] = {ShineConfig.model_type: ShineModel}


class AutoShineModel:
    """Loads a SHINE hypernetwork with its base LM, whatever it was saved as.

    - a SHINE checkpoint (local folder or Hub repo): the hypernetwork, with the base LM named in its config
      (or the ``base_model=`` you pass) attached;
    - a plain causal LM (Hub id or folder): a `CheckpointError`, unless ``allow_untrained=True`` (or
      `from_base_model`): then a **fresh, untrained** hypernetwork for it, to be trained.
    """

    def __init__(self) -> None:
        raise ArgumentError("Use AutoShineModel.from_pretrained(...) or AutoShineModel.from_base_model(...).")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *args: Any, base_model: PreTrainedModel | None = None,
                        revision: str | None = None, allow_untrained: bool = False, **kwargs: Any) -> ShineModel:
        """Load a hypernetwork checkpoint. A plain causal LM (a typo'd repo id, a base model) raises a
        `CheckpointError` unless ``allow_untrained=True``, which starts an untrained hypernetwork for it (as
        `from_base_model` does).

        From the Hub, the revision (branch, tag or commit; default ``main``) is resolved to one commit for the whole
        load, only ``config.json`` and ``model.safetensors`` are downloaded (through the cache; never pickle files),
        offline mode (``HF_HUB_OFFLINE=1``) is served from the cache, and ``model.hub_origin`` records the repo id,
        revision and commit (`peft_shine.hub.push_adapter` writes them into adapter cards). A missing repo, a
        refused token or a cold cache offline raise a `peft_shine.hub.HubError` that says what to do.

        The base-model options ``dtype``, ``device_map``, ``token``, ``cache_dir``, ``attn_implementation`` reach the
        base LM; ``hypernetwork_dtype`` (fp32 by default) is the hypernetwork's; any other keyword raises `TypeError`
        (see `peft_shine.loading`).
        """
        name_or_path = os.fspath(name_or_path)
        source = resolve_base_model_path(name_or_path, revision)
        origin, pinned = None, revision
        if not Path(source).is_dir():  # a Hub id

            pinned = resolve_hub_revision(source, revision, token=kwargs.get("token"))
            origin = hub_origin(source, pinned)
        config = AutoConfig.from_pretrained(source, revision=pinned, token=kwargs.get("token"),
                                            cache_dir=kwargs.get("cache_dir"))
        model_class = _MODEL_CLASSES.get(config.model_type)
        if model_class is None:
            if not allow_untrained:
                raise CheckpointError(
                    f"{name_or_path} is a {config.model_type} model, not a SHINE hypernetwork checkpoint. To start an "
                    f"untrained hypernetwork for it, use AutoShineModel.from_base_model({name_or_path!r}) or pass "
                    f"allow_untrained=True.")
            logger.warning(
                "%s is a %s model, not a SHINE checkpoint: creating an UNTRAINED hypernetwork for it.",
                name_or_path, config.model_type)
            return ShineModel.from_base_model(base_model or name_or_path, revision=revision, **kwargs)
        model = model_class.from_pretrained(name_or_path, *args, base_model=base_model, revision=pinned, **kwargs)
        model.hub_origin = origin
        return model

    @classmethod
    def from_base_model(cls, base_model: str | PreTrainedModel | None = None, **kwargs: Any) -> ShineModel:
        """A fresh, untrained hypernetwork for any supported causal LM (see `ShineModel.from_base_model`)."""
        return ShineModel.from_base_model(base_model, **kwargs)

    @classmethod
    def register(cls, config_class: type[ShineConfig], model_class: type[ShineModel]) -> None:
        """Register a `ShineModel` subclass for its config's ``model_type``."""
        _MODEL_CLASSES[config_class.model_type] = model_class
