"""Training cost: one SHINE step against one plain peft LoRA step on the same tokens (per-context fine-tuning
against adapter generation is `bench_finetune`)."""

from __future__ import annotations

import torch
from peft import get_peft_model

from peft_shine.evaluation.sft import reconstruction_batch, sft_lora_config

from .timing import median_seconds
from .workloads import context_of_length


def _conversation(tokenizer, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A reconstruction exchange of about ``tokens`` tokens in all (chat template included; labels on the answer)."""
    overhead = reconstruction_batch(tokenizer, "x")[0].shape[1] - 1
    return reconstruction_batch(tokenizer, context_of_length(tokenizer, max(1, tokens - overhead)))


def training_step_ratio(shine, context_tokens: int, conversation_tokens: int, repeats: int) -> dict:
    """Seconds of one SHINE training step (both passes, backward, AdamW) against one peft LoRA step (same rank and
    targets) on the context and the conversation together (the tokens SHINE's two passes process)."""
    tokenizer = shine.tokenizer
    context = context_of_length(tokenizer, context_tokens)
    ids, mask = shine.tokenize_contexts(context)
    conversation, labels = _conversation(tokenizer, conversation_tokens)
    shine.train()
    optimizer = torch.optim.AdamW(shine.hypernetwork_parameters(), lr=1e-6)

    def shine_step() -> None:
        loss = shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    shine_s = median_seconds(shine_step, repeats)
    shine.eval()
    plain_s = _peft_step_seconds(shine, torch.cat([ids, conversation], 1),
                                 torch.cat([torch.full_like(ids, -100), labels], 1), repeats)
    return {"context_tokens": int(ids.shape[1]), "conversation_tokens": int(conversation.shape[1]),
            "shine_step_s": shine_s, "peft_lora_step_s": plain_s, "ratio": shine_s / plain_s,
            "trainable_parameters": sum(p.numel() for p in shine.hypernetwork_parameters())}


def _fresh_peft_model(shine):
    """A plain peft LoRA (same rank and targets) on a separately loaded copy of the base LM."""
    from peft_shine.storage.base_models import load_base_model

    base, _ = load_base_model(shine.config.base_model_name_or_path, revision=shine.config.base_model_revision)
    return get_peft_model(base, sft_lora_config(shine)).train()


def _peft_step_seconds(shine, input_ids: torch.Tensor, labels: torch.Tensor, repeats: int) -> float:
    model = _fresh_peft_model(shine)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step() -> None:
        model(input_ids=input_ids, labels=labels, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, repeats)
