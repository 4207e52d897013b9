"""peft-shine: SHINE hypernetworks that turn a text context into a LoRA adapter in one forward pass."""

from peft_shine import _moved
from peft_shine.adapters.compose import compose_adapters
from peft_shine.adapters.memory import return_large_allocations_to_os
from peft_shine.adapters.pipeline import ChunkingConfig
from peft_shine.auto import AutoShineModel
from peft_shine.errors import (
    AdapterNotFoundError,
    AdapterSaveError,
    AdapterStateError,
    ArgumentError,
    BaseModelMismatchError,
    CheckpointError,
    ChunkingError,
    CompositionError,
    ConfigError,
    ContextError,
    DataError,
    DemoError,
    HubError,
    MissingFileError,
    ModelStateError,
    PullError,
    ShineError,
    StorageError,
    TargetExistsError,
    UnsupportedModelError,
)
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.hypernetwork.lora_binding import LoraWeights
from peft_shine.modeling_shine import ShineModel


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
    "MissingFileError",
    "ModelStateError",
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


def __getattr__(name: str):
    """`ShineTrainer` and `ShineTrainingArguments` are imported on first use (transformers' Trainer is heavy)."""
    if name in ("ShineTrainer", "ShineTrainingArguments"):
        from peft_shine.training import trainer  # transformers' Trainer is heavy: loaded on first use

        return getattr(trainer, name)
    raise AttributeError(f"module 'peft_shine' has no attribute {name!r}")
