"""peft-shine: SHINE hypernetworks that turn a text context into a LoRA adapter in one forward pass."""

from peft_shine.adapter_composition import compose_adapters
from peft_shine.auto import AutoShineModel
from peft_shine.configuration_shine import ShineConfig
from peft_shine.document_adapters import ChunkingConfig
from peft_shine.errors import (
    AdapterSaveError,
    AdapterStateError,
    BaseModelMismatchError,
    CheckpointError,
    ChunkingError,
    CompositionError,
    ContextError,
    DemoError,
    HubError,
    NonFiniteWeightsError,
    PullError,
    ShineError,
    TargetExistsError,
    UnsupportedModelError,
)
from peft_shine.lora_binding import LoraWeights
from peft_shine.memory import return_large_allocations_to_os
from peft_shine.modeling_shine import ShineModel


__version__ = "0.1.0.dev0"

__all__ = [
    "AdapterSaveError",
    "AdapterStateError",
    "AutoShineModel",
    "BaseModelMismatchError",
    "CheckpointError",
    "ChunkingConfig",
    "ChunkingError",
    "CompositionError",
    "ContextError",
    "DemoError",
    "HubError",
    "NonFiniteWeightsError",
    "LoraWeights",
    "PullError",
    "ShineConfig",
    "ShineError",
    "ShineModel",
    "ShineTrainer",
    "ShineTrainingArguments",
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
