"""Training cost: one SHINE step against one plain peft LoRA step on the same tokens, and per-context fine-tuning
(until it matches the generated adapter's reconstruction loss) against adapter generation."""

from __future__ import annotations

import time

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
    from peft_shine.base_models import load_base_model

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


def finetune_until_adapter_loss(shine, context_tokens: int, max_steps: int, learning_rate: float = 2e-3) -> dict:
    """Per-context LoRA fine-tuning (peft, same rank) until its reconstruction loss reaches the generated adapter's,
    against the time of generating the adapter."""
    tokenizer = shine.tokenizer
    context = context_of_length(tokenizer, context_tokens)
    conversation, labels = reconstruction_batch(tokenizer, context)
    ids, mask = shine.tokenize_contexts(context)
    with torch.no_grad():
        target = shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation,
                       labels=labels).loss.item()
    generation_s = median_seconds(lambda: shine.generate_adapter(context, adapter_names="bench"), 3)
    model = _fresh_peft_model(shine)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    started, steps, loss = time.perf_counter(), 0, float("inf")
    while steps < max_steps and loss > target:
        output = model(input_ids=conversation, labels=labels, use_cache=False)
        loss = output.loss.item()
        if loss <= target:
            break
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
    seconds = time.perf_counter() - started
    return {"context_tokens": int(ids.shape[1]), "adapter_loss": target, "finetune_loss": loss,
            "finetune_steps": steps, "reached": loss <= target, "finetune_s": seconds,
            "generation_s": generation_s, "time_ratio": seconds / generation_s}
