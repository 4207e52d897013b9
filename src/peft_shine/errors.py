"""Every error peft-shine raises on purpose.

Each derives from `ShineError` (catch that for "anything peft-shine refused") and from the builtin exception it
stands for (`ValueError` for bad input, `TypeError` for a wrong argument type, `KeyError` for a missing name,
`OSError` for files, `RuntimeError` for states), so code written against the builtins keeps working. Every message
names the problem and the fix. The general ones (`ConfigError`, `DataError`, `ArgumentError`, `ModelStateError`,
`MissingFileError`, `StorageError`) cover what no specific one names; nothing in the package raises a bare builtin
(`tests/test_house.py` checks).
"""

from __future__ import annotations


class ShineError(Exception):
    """Base class of every error peft-shine raises on purpose."""


class ConfigError(ShineError, ValueError):
    """An argument, option or configuration value is invalid: out of range, unknown, reserved, or in conflict with
    another."""


class DataError(ShineError, ValueError):
    """A dataset, data file or record does not have the shape peft-shine reads (a missing or mistyped field, no
    records, targets that do not belong to the batch)."""


class ArgumentError(ShineError, TypeError):
    """A call got an argument of the wrong type, a keyword it does not take, or two names for one argument."""


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


class ModelStateError(ShineError, RuntimeError):
    """The hypernetwork is not ready for the call (no base model or tokenizer attached, a partitioned embedding,
    weights that do not match), or one of its internal invariants failed (a bug: please report it)."""


class AdapterNotFoundError(ShineError, KeyError):
    """No generated adapter of that name is loaded."""


class CheckpointError(ShineError, OSError):
    """A hypernetwork checkpoint is missing, unsafe to load, truncated or corrupted."""


class TargetExistsError(ShineError, FileExistsError):
    """A save target exists and holds something peft-shine did not write; nothing was written."""


class AdapterSaveError(ShineError, OSError):
    """A written adapter file does not hold exactly the adapter's tensors; nothing was saved."""


class MissingFileError(ShineError, FileNotFoundError):
    """A file or folder that was named does not exist, or lacks a file it needs."""


class StorageError(ShineError, OSError):
    """Writing files failed (an I/O error, no free temporary name, nothing written) or a build step that writes
    them did."""


class HubError(ShineError, RuntimeError):
    """A push or pull failed; the message says why and what to do (check the repo id, log in, retry)."""


class PullError(ShineError, OSError):
    """A pulled repository is not a complete hypernetwork or adapter; nothing was written."""


class DemoError(ShineError, ValueError):
    """A problem to show the demo's user as is (its message names no server path and no secret)."""


class NonFiniteWeightsError(ShineError, FloatingPointError):
    """An optimizer step left NaN/Inf in the hypernetwork's weights; training stopped (no such checkpoint saved)."""


__all__ = [
    "AdapterNotFoundError",
    "AdapterSaveError",
    "AdapterStateError",
    "ArgumentError",
    "BaseModelMismatchError",
    "CheckpointError",
    "ChunkingError",
    "CompositionError",
    "ConfigError",
    "ContextError",
    "DataError",
    "DemoError",
    "HubError",
    "MissingFileError",
    "ModelStateError",
    "NonFiniteWeightsError",
    "PullError",
    "ShineError",
    "StorageError",
    "TargetExistsError",
    "UnsupportedModelError",
]
