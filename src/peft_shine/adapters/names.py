"""Adapter names peft handles correctly, and the check that a saved adapter holds exactly its own tensors.

peft finds an adapter's tensors by name: saving adapter ``x`` drops every key with a dot-separated part equal to
*another* adapter's name (``....lora_A.<other>.weight``). A name equal to a part of a parameter path of the base
(``model``, ``layers``, ``self_attn``, ``0``, ``weight``) or of peft's own keys (``base_model``, ``lora_A``,
``base_layer``) therefore makes peft drop or mix up tensors silently; ``__base__`` means "no adapter" in mixed
batches, and names containing ``lora_`` are peft's parameter prefix. `validate_adapter_names` refuses all of them,
and `verify_saved_adapter` re-reads every saved adapter file before the save is reported as done.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from peft_shine.errors import AdapterSaveError, ConfigError


ADAPTER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
PEFT_RESERVED_NAMES = frozenset({
    "__base__", "base_model", "model", "base_layer", "weight", "bias", "ranknum",
    "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_dropout", "lora_magnitude_vector",
})



def module_path_parts(model: nn.Module) -> frozenset[str]:
    """Every dot-separated part of the module and parameter paths of ``model`` outside peft's adapter slots.

    Parts after a ``lora_*`` part (where peft puts adapter names) are skipped, so a base that already carries
    adapters gives the same answer as a plain one.
    """
    parts: set[str] = set()
    names = [name for name, _ in model.named_modules()] + [name for name, _ in model.named_parameters()]
    for name in names:
        for part in name.split("."):
            if part.startswith("lora_"):
                break
            parts.add(part)
    parts.discard("")
    return frozenset(parts)


def validate_adapter_names(names: Sequence[str], count: int, reserved_parts: Iterable[str] = ()) -> None:
    """Adapter names: one per context, unique, 1-64 letters/digits/``_``/``-``, none of peft's reserved names
    (``__base__``, anything containing ``lora_``) and no part of a module path of the base (``reserved_parts``)."""
    if len(names) != count:
        raise ConfigError(f"Got {len(names)} adapter_names for {count} contexts; pass exactly one name per context.")
    for name in names:
        if not isinstance(name, str) or not ADAPTER_NAME_PATTERN.match(name):
            raise ConfigError(f"Invalid adapter name {name!r}: use a string of 1-64 letters, digits, '_' or '-'.")
    if len(set(names)) != len(names):
        raise ConfigError(f"adapter_names must be unique, got duplicates in {list(names)}.")
    reserved = PEFT_RESERVED_NAMES | frozenset(reserved_parts)
    for name in names:
        if name in reserved or "lora_" in name:
            where = ("is reserved by peft" if name in PEFT_RESERVED_NAMES or "lora_" in name
                     else "is part of the base model's module paths")
            raise ConfigError(
                f"Adapter name {name!r} {where}: peft would mix up or drop tensors when saving or selecting it "
                f"(names are matched against parameter paths; '__base__' means no adapter). Choose another name, "
                f"e.g. 'ctx-{name}'."
            )


def expected_adapter_tensors(peft_model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """Checkpoint key → tensor of every LoRA factor of ``adapter_name`` on ``peft_model``, read from its layers."""
    expected = {}
    for path, module in peft_model.named_modules():
        for factor in ("lora_A", "lora_B"):
            container = getattr(module, factor, None)
            if isinstance(container, nn.ModuleDict) and adapter_name in container:
                expected[f"{path}.{factor}.weight"] = container[adapter_name].weight
    return expected


def verify_saved_adapter(file: Path, peft_model: nn.Module, adapter_name: str, count: int | None = None) -> None:
    """Raise `AdapterSaveError` unless ``file`` holds exactly the tensors of ``adapter_name`` (keys, shapes, values)
    and, when given, ``count`` of them."""
    saved = load_file(str(file))
    expected = expected_adapter_tensors(peft_model, adapter_name)
    missing, extra = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    differ = [key for key in expected.keys() & saved.keys()
              if saved[key].shape != expected[key].shape
              or not torch.equal(saved[key], expected[key].detach().to("cpu", saved[key].dtype))]
    if missing or extra or differ or (count is not None and len(saved) != count):
        raise AdapterSaveError(
            f"The saved adapter {adapter_name!r} would hold {len(saved)} tensors instead of "
            f"{count if count is not None else len(expected)} (missing {missing[:3]}, unexpected {extra[:3]}, "
            f"different {differ[:3]}); nothing was saved. Its name probably clashes with another adapter or a "
            f"module of the base; regenerate it under another name."
        )
