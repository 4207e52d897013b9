"""Which linear modules of which decoder layers SHINE adapts, and how a parameter grid is cut into LoRA A/B.

A *layout* is discovered once from a base causal LM and recorded in `ShineConfig` (module names and shapes), so a
hypernetwork can be built, validated and sliced without the base model being loaded.

Slicing follows the SHINE "rl" layout: layer ``i``'s row of the parameter grid (``M·H`` numbers) is read
sequentially, module by module in the recorded order; for each module the next ``in·r`` numbers are ``A`` read
row-major as ``(in, r)`` and the next ``r·out`` numbers are ``B`` read row-major as ``(r, out)``. When ``D·r`` is not
a multiple of ``H`` the grid has ``ceil(D·r/H)`` memory slots and the trailing surplus of each row is unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from peft_shine.errors import UnsupportedModelError


# Target modules of each supported family, in SHINE's order: attention first, then MLP.
KNOWN_TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "phi3": ["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"],
    "gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
}
for _family in ("qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "granite",
                "smollm3", "cohere", "stablelm"):
    KNOWN_TARGET_MODULES[_family] = KNOWN_TARGET_MODULES["llama"]

_LAYER_CONTAINERS = ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers", "transformer.blocks")



@dataclass(frozen=True)
class ModuleSpec:
    """One adapted module of a decoder layer: its path inside the layer and its linear shape."""

    name: str
    in_features: int
    out_features: int

    @property
    def lora_size(self) -> int:
        """Numbers per rank of its LoRA pair: ``in + out``."""
        return self.in_features + self.out_features


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a GPT-2 style ``Conv1D`` (weight stored ``in × out``)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        in_features, out_features = module.weight.shape
        return int(in_features), int(out_features)
    raise UnsupportedModelError(
        f"{type(module).__name__} is not a linear layer; SHINE adapts nn.Linear and transformers' Conv1D only."
    )


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2 family), whose weight is transposed w.r.t. ``nn.Linear``."""
    return type(module).__name__ == "Conv1D"


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``ModuleList`` of decoder layers of a causal LM and its path (e.g. ``"model.layers"``)."""
    num_layers = model.config.get_text_config().num_hidden_layers
    for path in _LAYER_CONTAINERS:
        container = _get_submodule(model, path)
        if isinstance(container, nn.ModuleList) and len(container) == num_layers:
            return path, container
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and path:
            return path, module
    raise UnsupportedModelError(
        f"Could not find the {num_layers} decoder layers of {type(model).__name__}: no nn.ModuleList of that length "
        f"(looked at {', '.join(_LAYER_CONTAINERS)} and every submodule)."
    )


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def default_target_modules(model: nn.Module) -> list[str]:
    """The SHINE target modules for a supported family, or an error telling how to pass them explicitly."""
    model_type = model.config.get_text_config().model_type
    if model_type in KNOWN_TARGET_MODULES:
        return list(KNOWN_TARGET_MODULES[model_type])
    _, layers = find_decoder_layers(model)
    candidates = [name for name, sub in layers[0].named_modules() if isinstance(sub, nn.Linear) or is_conv1d(sub)]
    raise UnsupportedModelError(
        f"peft-shine has no default target modules for model_type {model_type!r}. Pass them explicitly in the "
        f"order attention-then-MLP, e.g. ShineConfig.from_base_model(model, target_modules={candidates!r}) "
        f"(these are the linear layers found in its first decoder layer)."
    )


def discover_modules(model: nn.Module, target_modules: list[str] | None = None) -> list[ModuleSpec]:
    """Resolve ``target_modules`` (paths inside a decoder layer) to shapes, checking every layer agrees."""
    targets = list(target_modules) if target_modules else default_target_modules(model)
    _, layers = find_decoder_layers(model)
    specs = []
    for name in targets:
        shapes = set()
        for index, layer in enumerate(layers):
            module = _get_submodule(layer, name)
            if module is None:
                raise UnsupportedModelError(
                    f"Decoder layer {index} of {type(model).__name__} has no submodule {name!r}. Available linear "
                    f"layers: {[n for n, m in layer.named_modules() if isinstance(m, nn.Linear) or is_conv1d(m)]}."
                )
            shapes.add(linear_shape(_unwrap_peft(module)))
        if len(shapes) != 1:
            raise UnsupportedModelError(f"Module {name!r} has different shapes across layers: {sorted(shapes)}.")
        in_features, out_features = shapes.pop()
        specs.append(ModuleSpec(name, in_features, out_features))
    return specs


def _unwrap_peft(module: nn.Module) -> nn.Module:
    """The original layer inside a peft LoRA wrapper (a base may already carry generated adapters)."""
    return getattr(module, "base_layer", module)


def target_layer_modules(model: nn.Module, specs: list[ModuleSpec]) -> list[list[nn.Module]]:
    """``[layer][module]`` -> the base LM's original linear layer (unwrapped from any peft LoRA layer)."""
    _, layers = find_decoder_layers(model)
    return [[_unwrap_peft(layer.get_submodule(spec.name)) for spec in specs] for layer in layers]


def layer_lora_numel(specs: list[ModuleSpec], rank: int) -> int:
    """Numbers of one decoder layer's generated LoRA: ``D·r`` with ``D = Σ(in + out)``."""
    return rank * sum(spec.lora_size for spec in specs)


def num_memory_slots(specs: list[ModuleSpec], rank: int, hidden_size: int) -> int:
    """``M = ceil(D·r / H)``: exact when divisible (SHINE's code); otherwise the row's surplus is unused."""
    return math.ceil(layer_lora_numel(specs, rank) / hidden_size)


def slice_offsets(specs: list[ModuleSpec], rank: int) -> list[tuple[str, int, int, int]]:
    """``(module, a_start, b_start, end)`` offsets into one layer's row, in the "rl" layout."""
    offsets, start = [], 0
    for spec in specs:
        b_start = start + spec.in_features * rank
        end = b_start + rank * spec.out_features
        offsets.append((spec.name, start, b_start, end))
        start = end
    return offsets


def slice_parameter_grid(
    grid: torch.Tensor, specs: list[ModuleSpec], rank: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut a parameter grid ``(batch, layers, M, H)`` into per-module raw ``A (batch, layers, in, r)`` and
    ``B (batch, layers, r, out)``.

    Both are views of the grid (no copy); the output scale is applied where the LoRA is used or exported.
    """
    batch, layers = grid.shape[:2]
    rows = grid.reshape(batch, layers, -1)
    pairs = []
    for spec, (_, a_start, b_start, end) in zip(specs, slice_offsets(specs, rank)):
        a = rows[..., a_start:b_start].unflatten(-1, (spec.in_features, rank))
        b = rows[..., b_start:end].unflatten(-1, (rank, spec.out_features))
        pairs.append((a, b))
    return pairs
