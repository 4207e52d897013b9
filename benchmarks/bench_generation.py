"""Adapter generation against the base model's own prefill, and generation throughput."""

from __future__ import annotations

import random
import time

import torch

from peft_shine.adapter_store import add_adapters
from peft_shine.export import peft_state_dict

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


def mixed_contexts(tokenizer, count: int, low: int, high: int, seed: int = 0) -> list[str]:
    """``count`` distinct contexts of prose with token lengths drawn uniformly from ``[low, high]``."""
    rng = random.Random(seed)
    lengths = [rng.randint(low, high) for _ in range(count)]
    pool = tokenizer(context_of_length(tokenizer, sum(lengths)), add_special_tokens=False).input_ids
    starts = [sum(lengths[:index]) for index in range(count)]
    return [tokenizer.decode(pool[start:start + length]) for start, length in zip(starts, lengths)]


def mixed_throughput(shine, batch_sizes: list[int], count: int, low: int = 64, high: int = 512) -> list[dict]:
    """Contexts per second of ``generate_adapter`` on ``count`` contexts of mixed lengths, per ``batch_size``:
    ``sorted`` is one ``generate_adapter`` call (length-sorted batches capped by `plan_batches`), ``unsorted`` the
    naive alternative: batches of ``batch_size`` contexts in the given order, each padded to its longest."""
    contexts = mixed_contexts(shine.tokenizer, count, low, high)
    tokens = sum(len(shine.tokenizer(text, add_special_tokens=False).input_ids) for text in contexts)
    names = [f"mixed_{index}" for index in range(count)]
    shine.generate_adapter(contexts[:2], adapter_names=names[:2])  # warm: the PeftModel exists

    def timed(run) -> float:
        started = time.perf_counter()
        run()
        return time.perf_counter() - started

    rows = []
    for batch in batch_sizes:
        ordered = timed(lambda batch=batch: shine.generate_adapter(contexts, adapter_names=names, batch_size=batch))
        unsorted = timed(lambda batch=batch: _in_given_order(shine, contexts, names, batch))
        rows.append({"batch_size": batch, "contexts": count, "context_tokens": tokens,
                     "sorted_contexts_per_s": count / ordered, "unsorted_contexts_per_s": count / unsorted,
                     "sorted_tokens_per_s": tokens / ordered})
    shine.delete_adapters(names)
    return rows


def _in_given_order(shine, contexts: list[str], names: list[str], batch: int) -> None:
    """Adapters from fixed-size batches in the given order, without sorting or caps (the naive batching)."""
    config = shine.adapter_lora_config()
    for start in range(0, len(contexts), batch):
        with torch.no_grad():
            lora = shine.generate_lora(*shine.tokenize_contexts(contexts[start:start + batch]))
        states = {names[start + row]: peft_state_dict(shine.base_lm, shine.config.module_specs, lora, row)
                  for row in range(lora.num_loras)}
        shine.peft_model = add_adapters(shine.base_lm, shine.peft_model, config, states)
