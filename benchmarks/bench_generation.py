"""Generation throughput on contexts of mixed lengths: length-sorted, capped batches against naive batching
(the cost against the base's prefill is `bench_breakdown`)."""

from __future__ import annotations

import random
import time

import torch

from peft_shine.adapters.export import peft_state_dict
from peft_shine.adapters.store import add_adapters

from .workloads import context_of_length


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
