"""peft-shine: SHINE hypernetworks that turn a text context into a LoRA adapter in one forward pass."""

from .auto import AutoShineModel
from .checkpoints import CheckpointError
from .chunking import ChunkingError
from .composition import CompositionError, compose_adapters
from .configuration_shine import ShineConfig
from .contexts import ContextError
from .document_adapters import ChunkingConfig
from .layout import UnsupportedModelError
from .lora_binding import LoraWeights
from .modeling_shine import BaseModelMismatchError, ShineModel


__version__ = "0.1.0.dev0"

__all__ = [
    "AutoShineModel",
    "BaseModelMismatchError",
    "CheckpointError",
    "ChunkingConfig",
    "ChunkingError",
    "CompositionError",
    "ContextError",
    "LoraWeights",
    "ShineConfig",
    "ShineModel",
    "ShineTrainer",
    "ShineTrainingArguments",
    "UnsupportedModelError",
    "__version__",
    "compose_adapters",
]


def __getattr__(name: str):
    """`ShineTrainer` and `ShineTrainingArguments` are imported on first use (transformers' Trainer is heavy)."""
    if name in ("ShineTrainer", "ShineTrainingArguments"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'peft_shine' has no attribute {name!r}")
