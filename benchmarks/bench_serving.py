"""Serving many generated adapters, and when an adapter pays off against the context in the prompt.

``rows``: greedy answers to a batch of SQuAD questions (the same number of new tokens for every method), where

- ``mixed``: every row has its own generated adapter (peft's mixed batch, ``generate(..., adapter_names=[...])``);
- ``one_adapter``: one adapter for every row, unmerged, and ``one_adapter_merged`` (``merge_adapter()`` first);
- ``base``: the base model alone (adapters disabled).

``break_even``: per context length, the questions per context ``k`` from which generating an adapter and answering
with it costs less than answering with the context in the prompt:
``k* = generate_adapter(n) / (in_context(n) − adapter)`` with per-question latencies at batch 1 (merged adapter,
question only in the prompt). Contexts beyond the shipped checkpoint's 512 training tokens are measured for their
cost only (see `bench_breakdown`).
"""

from __future__ import annotations

import contextlib

import torch

from peft_shine.prompting import build_prompt
from peft_shine.qa_data import load_qa_records

from .bench_breakdown import longest_context
from .timing import median_seconds
from .workloads import context_of_length, squad_questions


def _answer(model, tokenizer, prompts: list[str], new_tokens: int, adapter_names: list[str] | None = None,
            base: bool = False) -> None:
    """One greedy batch (left-padded), exactly ``new_tokens`` new tokens per row."""
    previous, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous
    extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
    disabled = model.disable_adapter() if base else contextlib.nullcontext()
    with torch.inference_mode(), disabled:
        model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id, **extra)


def _questions(count: int) -> tuple[list[str], list[str]]:
    """``count`` (context, question) pairs from distinct SQuAD paragraphs (one question each)."""
    seen: dict[str, str] = {}
    for record in load_qa_records("squad"):
        seen.setdefault(record.context, record.question)
        if len(seen) == count:
            break
    return list(seen), list(seen.values())


def rows_latency(shine, row_counts: list[int], new_tokens: int, repeats: int) -> list[dict]:
    """Seconds per batch of ``rows`` questions, each method side by side (see the module docstring)."""
    tokenizer = shine.tokenizer
    contexts, questions = _questions(max(row_counts))
    names = [f"serve_{index}" for index in range(len(contexts))]
    model = shine.generate_adapter(contexts, adapter_names=names)
    prompts = [build_prompt(tokenizer, question) for question in questions]
    rows = []
    for count in row_counts:
        batch = prompts[:count]

        def timed(batch=batch, **options) -> float:
            return median_seconds(lambda: _answer(model, tokenizer, batch, new_tokens, **options), repeats)

        row = {"rows": count, "new_tokens": new_tokens, "mixed_s": timed(adapter_names=names[:count]),
               "base_s": timed(base=True)}
        model.set_adapter(names[0])
        row["one_adapter_s"] = timed()
        model.merge_adapter()
        try:
            row["one_adapter_merged_s"] = timed()
        finally:
            model.unmerge_adapter()
        row["mixed_over_one"] = row["mixed_s"] / row["one_adapter_s"]
        rows.append(row)
    shine.delete_adapters(names)
    return rows


def break_even(shine, lengths: list[int], new_tokens: int, repeats: int) -> list[dict]:
    """Per context length: generation time, per-question latency with the adapter (merged) and with the context in
    the prompt, and the break-even number of questions per context."""
    tokenizer = shine.tokenizer
    _, questions = squad_questions(1)
    shine.config.max_context_length = max(shine.config.max_context_length, *lengths)
    model = shine.generate_adapter(context_of_length(tokenizer, 64), adapter_names="serve_k")
    model.merge_adapter()
    try:
        adapter_s = median_seconds(lambda: _answer(model, tokenizer, [build_prompt(tokenizer, questions[0])],
                                                   new_tokens), repeats)
    finally:
        model.unmerge_adapter()
    rows = []
    for requested in lengths:
        context = context_of_length(tokenizer, min(requested, longest_context(shine) - 128))  # room for the chat
        generation_s = median_seconds(lambda context=context: shine.generate_adapter(context, adapter_names="serve_k"), repeats)
        prompt = build_prompt(tokenizer, questions[0], context)
        in_context_s = median_seconds(lambda prompt=prompt: _answer(model, tokenizer, [prompt], new_tokens, base=True), repeats)
        gap = in_context_s - adapter_s
        rows.append({"context_tokens": requested, "generation_s": generation_s, "adapter_merged_s": adapter_s,
                     "in_context_s": in_context_s, "break_even_questions": generation_s / gap if gap > 0 else None})
    shine.delete_adapters("serve_k")
    return rows
