"""peft-shine: SHINE hypernetworks that turn a text context into a LoRA adapter in one forward pass."""

import importlib
import os
from typing import Any

from peft_shine import _moved


_moved.install()  # the module paths from before the core moved into folders keep importing


__version__ = "0.1.0.dev0"

__all__ = [
    "AdapterNotFoundError",
    "AdapterSaveError",
    "AdapterStateError",
    "ArgumentError",
    "AutoShineModel",
    "BaseModelMismatchError",
    "CheckpointError",
    "ChunkingConfig",
    "ChunkingError",
    "CompositionError",
    "ConfigError",
    "ContextError",
    "DataError",
    "DemoError",
    "HubError",
    "LoraWeights",
    "LossWeights",
    "MissingFileError",
    "ModelStateError",
    "NonFiniteWeightsError",
    "PullError",
    "ShineConfig",
    "ShineError",
    "ShineModel",
    "ShineTrainer",
    "ShineTrainingArguments",
    "StorageError",
    "TargetExistsError",
    "UnsupportedModelError",
    "__version__",
    "compose_adapters",
    "return_large_allocations_to_os",
]


_ERRORS = ("AdapterNotFoundError", "AdapterSaveError", "AdapterStateError", "ArgumentError", "BaseModelMismatchError",
           "CheckpointError", "ChunkingError", "CompositionError", "ConfigError", "ContextError", "DataError",
           "DemoError", "HubError", "MissingFileError", "ModelStateError", "NonFiniteWeightsError", "PullError", "ShineError", "StorageError",
           "TargetExistsError", "UnsupportedModelError")
_HOMES = {
    "AutoShineModel": "peft_shine.auto",
    "ChunkingConfig": "peft_shine.adapters.pipeline",
    "LoraWeights": "peft_shine.hypernetwork.lora_binding",
    "LossWeights": "peft_shine.hypernetwork.losses",
    "ShineConfig": "peft_shine.hypernetwork.configuration_shine",
    "ShineModel": "peft_shine.modeling_shine",
    "ShineTrainer": "peft_shine.training.trainer",  # transformers' Trainer is heavy: loaded on first use
    "ShineTrainingArguments": "peft_shine.training.arguments",  # with the training stack, on first use
    "compose_adapters": "peft_shine.adapters.compose",
    "return_large_allocations_to_os": "peft_shine.adapters.memory",
    **dict.fromkeys(_ERRORS, "peft_shine.errors"),
}
LAZY_IMPORT_ENV = "PEFT_SHINE_LAZY_IMPORT"  # "1": `import peft_shine` loads nothing heavy (the `shine` command)


def __getattr__(name: str) -> Any:
    """Every public name is imported from its module on first use (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'peft_shine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if os.environ.get(LAZY_IMPORT_ENV, "").strip() in ("", "0"):
    # the documented side effect of `import peft_shine`: ShineConfig / ShineModel registered with transformers'
    # AutoConfig / AutoModel, so a SHINE folder loads through them (what loads one imports `auto` itself)
    from peft_shine import auto  # noqa: F401
