"""Adapter generation against the base model's own prefill, and generation throughput."""

from __future__ import annotations

import torch

from .timing import median_seconds
from .workloads import context_of_length


def generation_vs_prefill(shine, lengths: list[int], repeats: int) -> list[dict]:
    """Per context length: the base LM's prefill (forward + KV cache, last logit only) against SHINE's
    ``generate_lora`` (pass 1 + M2P + slicing) and the full ``generate_adapter`` (tokenize + export to peft)."""
    tokenizer, base = shine.tokenizer, shine.base_lm
    rows = []
    for tokens in lengths:
        text = context_of_length(tokenizer, tokens)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.inference_mode():
            prefill = median_seconds(lambda ids=ids: base(ids, use_cache=True, logits_to_keep=1), repeats)
            lora = median_seconds(lambda ids=ids: shine.generate_lora(ids), repeats)
        adapter = median_seconds(lambda text=text: shine.generate_adapter(text, adapter_names="bench"), repeats)
        rows.append({"context_tokens": int(ids.shape[1]), "prefill_s": prefill, "generate_lora_s": lora,
                     "generate_adapter_s": adapter, "lora_over_prefill": lora / prefill,
                     "adapter_over_prefill": adapter / prefill})
    return rows


def generation_throughput(shine, batch_sizes: list[int], tokens: int, repeats: int) -> list[dict]:
    """Contexts per second of ``generate_lora`` at several batch sizes (distinct contexts of equal length)."""
    tokenizer = shine.tokenizer
    pool = tokenizer(context_of_length(tokenizer, tokens * max(batch_sizes)), add_special_tokens=False).input_ids
    rows = []
    for batch in batch_sizes:
        ids = torch.tensor([pool[i * tokens:(i + 1) * tokens] for i in range(batch)])
        with torch.inference_mode():
            seconds = median_seconds(lambda ids=ids: shine.generate_lora(ids), max(1, repeats // 2))
        rows.append({"batch_size": batch, "context_tokens": tokens, "seconds": seconds,
                     "contexts_per_second": batch / seconds})
    return rows
