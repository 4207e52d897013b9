"""Bounds on every `ShineConfig` value, checked before a single tensor is allocated.

A `config.json` is input like any other: a mistyped or hostile one (``m2p_num_layers = 10**6``, ``lora_scale = NaN``,
negative sizes) must fail at once with a message naming the field, not hang allocating memory, produce NaN logits or
end in a raw torch error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from peft_shine.errors import ConfigError


# field -> (minimum, maximum), inclusive; integers
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 65_536),
    "num_base_layers": (1, 1_024),
    "base_vocab_size": (1, 10_000_000),
    "lora_rank": (1, 1_024),
    "bias_lora_rank": (0, 1_024),
    "meta_lora_rank": (0, 1_024),
    "num_memory_slots": (1, 1_000_000),
    "m2p_num_layers": (1, 64),
    "m2p_num_heads": (1, 1_024),
    "m2p_ffn_dim": (1, 1_048_576),
    "max_context_length": (1, 1_048_576),
    "max_conversation_length": (1, 1_048_576),
}
POSITIVE_FLOATS = ("lora_scale", "meta_lora_init_scale")
MAX_FLOAT = 1e6
MAX_HYPERNETWORK_PARAMETERS = 4_000_000_000  # 16 GB in float32


def _check_int(name: str, value: Any) -> None:
    low, high = INT_BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"ShineConfig.{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if not low <= value <= high:
        raise ConfigError(f"ShineConfig.{name}={value} is out of bounds: allowed {low} to {high}.")


def _check_positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"ShineConfig.{name} must be a number, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value) or not 0 < value <= MAX_FLOAT:
        raise ConfigError(f"ShineConfig.{name}={value} must be finite and positive (at most {MAX_FLOAT:g}).")


def _check_modules(targets: Any, shapes: Any, hidden: int) -> None:
    if not isinstance(targets, list | tuple) or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"ShineConfig.target_modules must be a list of module paths, got {targets!r}.")
    if not isinstance(shapes, list | tuple):
        raise ConfigError(f"ShineConfig.module_shapes must be a list of [in_features, out_features], got {shapes!r}.")
    for shape in shapes:
        if (not isinstance(shape, list | tuple) or len(shape) != 2
                or not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 64 * hidden for n in shape)):
            raise ConfigError(f"ShineConfig.module_shapes entry {shape!r} must be [in_features, out_features], "
                              f"positive integers of at most 64 × hidden_size.")


def parameter_count(values: Mapping[str, Any]) -> int:
    """Parameters of the hypernetwork these values describe (memory slots, meta-LoRA, M2P), without allocating."""
    hidden, layers, slots = values["hidden_size"], values["num_base_layers"], values["num_memory_slots"]
    meta = layers * (values["meta_lora_rank"] + (values.get("bias_lora_rank") or 0)) * sum(
        i + o for i, o in values["module_shapes"])
    block = 4 * hidden * hidden + 2 * hidden * values["m2p_ffn_dim"] + 10 * hidden
    return slots * hidden + meta + (layers + slots) * hidden + values["m2p_num_layers"] * block


def check_bounds(values: Mapping[str, Any]) -> None:
    """Raise `ValueError` naming the first value out of bounds (``None`` means "derive it" and is skipped)."""
    for name in INT_BOUNDS:
        if values.get(name) is not None:
            _check_int(name, values[name])
    for name in POSITIVE_FLOATS:
        _check_positive_float(name, values.get(name))
    gate = values.get("generated_gate_init")
    if gate is not None and (isinstance(gate, bool) or not isinstance(gate, int | float) or not math.isfinite(gate)):
        raise ConfigError(f"ShineConfig.generated_gate_init must be a finite number or null, got {gate!r}.")
    _check_modules(values.get("target_modules") or [], values.get("module_shapes") or [], values["hidden_size"])
    if all(values.get(name) is not None for name in ("num_memory_slots", "m2p_ffn_dim")):
        count = parameter_count({**values, "module_shapes": values.get("module_shapes") or []})
        if count > MAX_HYPERNETWORK_PARAMETERS:
            raise ConfigError(f"This ShineConfig describes a hypernetwork of {count:,} parameters, more than the "
                              f"{MAX_HYPERNETWORK_PARAMETERS:,} allowed; check num_memory_slots, m2p_num_layers, "
                              f"m2p_ffn_dim and meta_lora_rank.")
