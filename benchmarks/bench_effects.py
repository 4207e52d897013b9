"""The measured effect of individual optimisations, each against the unoptimised alternative in the same run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import set_peft_model_state_dict
from peft.utils.hotswap import hotswap_adapter_from_state_dict

from peft_shine.adapters.export import peft_state_dict
from peft_shine.adapters.store import add_adapters

from .bench_training import _conversation
from .timing import median_seconds
from .workloads import context_of_length


def logits_only_at_labels(shine, conversation_tokens: int, repeats: int) -> dict:
    """Answer-pass forward+backward with the lm_head at labelled positions only (what `ShineModel.forward` does)
    against the lm_head over every position."""
    conversation, labels = _conversation(shine.tokenizer, conversation_tokens)
    lora = shine.generate_lora(*shine.tokenize_contexts(context_of_length(shine.tokenizer, 128)))
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    targets = labels[:, 1:][keep[:, :-1]]

    def step(selected: bool) -> None:
        with shine.apply_lora(lora) as base:
            if selected:
                logits = base(input_ids=conversation, logits_to_keep=keep, use_cache=False).logits
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)
            else:
                loss = base(input_ids=conversation, labels=labels, use_cache=False).loss
        loss.backward(retain_graph=True)

    full = median_seconds(lambda: step(False), repeats)
    selected = median_seconds(lambda: step(True), repeats)
    return {"conversation_tokens": int(conversation.shape[1]), "label_tokens": int(targets.numel()),
            "all_positions_s": full, "labelled_positions_s": selected, "speedup": full / selected}


def adapter_export(shine, repeats: int) -> dict:
    """Loading one generated adapter into peft, four ways, side by side (the base holds one adapter already):

    - ``peft_add_adapter_s``: peft's ``add_adapter`` for a new name + ``set_peft_model_state_dict`` (peft's path);
    - ``direct_new_s``: a new name filled straight into peft's LoRA layers (what `generate_adapter` does);
    - ``in_place_s``: the same name again, copied into its existing ``lora_A``/``lora_B`` (`generate_adapter`'s
      path for an existing name);
    - ``hotswap_s``: ``peft.utils.hotswap.hotswap_adapter_from_state_dict`` into the existing adapter.
    """
    with torch.no_grad():
        lora = shine.generate_lora(*shine.tokenize_contexts(context_of_length(shine.tokenizer, 128)))
    state = peft_state_dict(shine.base_lm, shine.config.module_specs, lora, 0)
    config = shine.adapter_lora_config()
    shine.peft_model = add_adapters(shine.base_lm, shine.peft_model, config, {"export_bench": state})
    model = shine.peft_model
    swapped = {key.replace(".weight", ".export_bench.weight"): value for key, value in state.items()}
    created: list[str] = []

    def through_peft() -> None:
        created.append(f"export_peft_{len(created)}")
        model.add_adapter(created[-1], config, low_cpu_mem_usage=True)
        set_peft_model_state_dict(model, state, adapter_name=created[-1], low_cpu_mem_usage=True)
        model.set_adapter("export_bench")

    def direct() -> None:
        created.append(f"export_new_{len(created)}")
        add_adapters(shine.base_lm, model, config, {created[-1]: state})

    result = {"peft_add_adapter_s": median_seconds(through_peft, repeats),
              "direct_new_s": median_seconds(direct, repeats),
              "in_place_s": median_seconds(lambda: add_adapters(shine.base_lm, model, config, {"export_bench": state}),
                                           repeats),
              "hotswap_s": median_seconds(lambda: hotswap_adapter_from_state_dict(model, swapped, "export_bench",
                                                                                   config), repeats)}
    shine.delete_adapters([*created, "export_bench"])
    result["fastest"] = min(result, key=result.get).removesuffix("_s")
    return result
