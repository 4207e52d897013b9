"""Generated LoRA tensors → standard peft artefacts: `LoraConfig`, peft state dicts and flat adapter folders.

The exported adapter is a plain LoRA (``PeftType.LORA``), so stock peft, `AutoPeftModelForCausalLM` and vLLM load
it. The hypernetwork's output scale ``s`` is folded into the weights as ``sqrt(s)`` on each of A and B and
``lora_alpha = r``, so peft's own scaling is 1.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model_state_dict
from torch import nn

from peft_shine.adapters.names import verify_saved_adapter
from peft_shine.hypernetwork.layout import ModuleSpec, find_decoder_layers, is_conv1d, target_layer_modules
from peft_shine.hypernetwork.lora_binding import LoraWeights
from peft_shine.storage.io_utils import atomic_save_safetensors
from peft_shine.storage.save_targets import adapter_marker, guarded_directory


def peft_target_modules(base_lm: nn.Module, specs: list[ModuleSpec]) -> list[str]:
    """Target names for `LoraConfig`: bare leaf names (``q_proj``) when they select exactly the SHINE targets in
    the whole model (what vLLM and most tools expect), else paths inside the decoder layer (``mlp.c_proj``)."""
    layers_path, _ = find_decoder_layers(base_lm)
    wanted = {f"{layers_path}.{i}.{spec.name}" for i in range(_num_layers(base_lm)) for spec in specs}
    leaves = sorted({spec.name.rsplit(".", 1)[-1] for spec in specs})
    matched = {name for name, _ in base_lm.named_modules() if name.rsplit(".", 1)[-1] in leaves}
    return leaves if matched == wanted else [spec.name for spec in specs]


def _num_layers(base_lm: nn.Module) -> int:
    return base_lm.config.get_text_config().num_hidden_layers


def lora_config(base_lm: nn.Module, specs: list[ModuleSpec], rank: int, base_model_name_or_path: str | None,
                revision: str | None = None) -> LoraConfig:
    """The `LoraConfig` of a generated adapter (scaling folded into the weights: ``lora_alpha = r``)."""
    modules = target_layer_modules(base_lm, specs)
    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        lora_dropout=0.0,
        bias="none",
        target_modules=peft_target_modules(base_lm, specs),
        fan_in_fan_out=any(is_conv1d(m) for m in modules[0]),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path,
        revision=revision,
        init_lora_weights=False,
    )


def peft_state_dict(base_lm: nn.Module, specs: list[ModuleSpec], lora: LoraWeights, index: int) -> dict:
    """The peft checkpoint-format state dict (``base_model.model.<path>.lora_A.weight``) of LoRA ``index``."""
    layers_path, _ = find_decoder_layers(base_lm)
    root = math.sqrt(lora.scale)
    state = {}
    for spec, (a, b) in zip(specs, lora.pairs):
        for layer in range(a.shape[1]):
            prefix = f"base_model.model.{layers_path}.{layer}.{spec.name}"
            state[f"{prefix}.lora_A.weight"] = (a[index, layer].T * root).contiguous()
            state[f"{prefix}.lora_B.weight"] = (b[index, layer].T * root).contiguous()
    return state


def write_adapter_folder(peft_model: PeftModel, adapter_name: str, path: str | Path, extra_files: dict | None = None, *,
                 overwrite: bool = False, expected_tensors: int | None = None) -> Path:
    """Write one adapter as a flat, standard peft LoRA folder (loads as ``"default"``), atomically.

    ``path`` follows `peft_shine.storage.save_targets`: a missing folder is created, a previous adapter folder
    (marked by `save_targets.adapter_marker` in the weights' metadata) is replaced, a file or any other folder is
    refused (`TargetExistsError`) unless ``overwrite=True``, which writes only the adapter's files into it. A
    ``README.md`` the user edited is kept either way. The written weights are read back and compared with the adapter's
    layers (and ``expected_tensors``, when given) before anything lands in ``path`` (`AdapterSaveError`).
    """
    path = Path(path)
    with guarded_directory(path, extra_names=list(extra_files or {}), overwrite=overwrite) as tmp:
        peft_model.peft_config[adapter_name].save_pretrained(tmp)
        state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False)
        card = (extra_files or {}).get("README.md")
        atomic_save_safetensors(state, tmp / "adapter_model.safetensors", metadata=adapter_marker(card))
        verify_saved_adapter(tmp / "adapter_model.safetensors", peft_model, adapter_name, expected_tensors)
        for name, content in (extra_files or {}).items():
            text = content if isinstance(content, str) else json.dumps(content, indent=2)
            (tmp / name).write_text(text)
    return path
