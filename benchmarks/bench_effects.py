"""The measured effect of individual optimisations, each against the unoptimised alternative in the same run."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peft_shine.adapter_store import add_adapters
from peft_shine.export import lora_config, peft_state_dict

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
    """Loading generated weights into peft: a new named adapter (module creation) against overwriting an existing
    adapter in place (what `generate_adapter` does for a name that exists)."""
    with torch.no_grad():
        lora = shine.generate_lora(*shine.tokenize_contexts(context_of_length(shine.tokenizer, 128)))
    state = peft_state_dict(shine.base_lm, shine.config.module_specs, lora, 0)
    config = lora_config(shine.base_lm, shine.config.module_specs, shine.config.lora_rank,
                         shine.config.base_model_name_or_path)
    shine.peft_model = add_adapters(shine.base_lm, shine.peft_model, config, {"export_bench": state})
    names = iter(f"export_new_{i}" for i in range(repeats + 1))
    new = median_seconds(lambda: add_adapters(shine.base_lm, shine.peft_model, config, {next(names): state}), repeats)
    replace = median_seconds(lambda: add_adapters(shine.base_lm, shine.peft_model, config, {"export_bench": state}),
                             repeats)
    for i in range(repeats + 1):
        shine.peft_model.delete_adapter(f"export_new_{i}")
    return {"new_adapter_s": new, "replace_in_place_s": replace, "speedup": new / replace}
