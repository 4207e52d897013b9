"""Every error peft-shine raises on purpose.

Each derives from `ShineError` (catch that for "anything peft-shine refused") and from the builtin exception it
stands for (`ValueError` for bad input, `OSError` for files, `RuntimeError` for states), so code written against the
builtins keeps working. Every message names the problem and the fix.
"""

from __future__ import annotations


class ShineError(Exception):
    """Base class of every error peft-shine raises on purpose."""


class ContextError(ShineError, ValueError):
    """A context cannot be encoded (empty, not a string, or too long)."""


class UnsupportedModelError(ShineError, ValueError):
    """The base model's decoder layers or target modules could not be found."""


class BaseModelMismatchError(ShineError, ValueError):
    """The base LM does not have the shapes this hypernetwork was built for."""


class ChunkingError(ShineError, ValueError):
    """A document cannot be chunked as asked (bad chunk size or overlap, no tokens, a tokenizer without offsets)."""


class CompositionError(ShineError, ValueError):
    """Adapters cannot be combined as asked (unknown rule, bad weights, rank budget, mismatched modules)."""


class AdapterStateError(ShineError, RuntimeError):
    """The shared base model no longer matches what SHINE encodes with (e.g. a generated adapter was merged into
    it with ``merge_and_unload()``, or its peft wrappers were removed with ``unload()``), or an adapter of the name
    being generated adapts other modules."""


class CheckpointError(ShineError, OSError):
    """A hypernetwork checkpoint is missing, unsafe to load, truncated or corrupted."""


class TargetExistsError(ShineError, FileExistsError):
    """A save target exists and holds something peft-shine did not write; nothing was written."""


class AdapterSaveError(ShineError, OSError):
    """A written adapter file does not hold exactly the adapter's tensors; nothing was saved."""


class HubError(ShineError, RuntimeError):
    """A push or pull failed; the message says why and what to do (check the repo id, log in, retry)."""


class PullError(ShineError, OSError):
    """A pulled repository is not a complete hypernetwork or adapter; nothing was written."""


class DemoError(ShineError, ValueError):
    """A problem to show the demo's user as is (its message names no server path and no secret)."""


class NonFiniteWeightsError(ShineError, FloatingPointError):
    """An optimizer step left NaN/Inf in the hypernetwork's weights; training stopped (no such checkpoint saved)."""


__all__ = [
    "AdapterSaveError",
    "AdapterStateError",
    "BaseModelMismatchError",
    "ChunkingError",
    "CheckpointError",
    "CompositionError",
    "ContextError",
    "DemoError",
    "HubError",
    "NonFiniteWeightsError",
    "PullError",
    "ShineError",
    "TargetExistsError",
    "UnsupportedModelError",
]
