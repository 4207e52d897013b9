"""Answer latency with the adapter (unmerged and merged) against no context and context in the prompt."""

from __future__ import annotations

import contextlib

import torch

from peft_shine.prompting import BASE_ADAPTER, build_prompt

from .timing import median_seconds
from .workloads import squad_questions


def _answer(model, tokenizer, prompt: str, new_tokens: int, adapter: str | None) -> None:
    """One greedy answer; ``adapter == "__base__"`` runs the base alone (adapters disabled, no mixed-batch path)."""
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    disabled = model.disable_adapter() if adapter == BASE_ADAPTER else contextlib.nullcontext()
    with torch.inference_mode(), disabled:
        model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)


def answer_latency(shine, questions: int, new_tokens: int, repeats: int) -> dict:
    """Median seconds per question (batch 1, the same number of generated tokens for every method)."""
    tokenizer = shine.tokenizer
    context, texts = squad_questions(questions)
    prompts = [build_prompt(tokenizer, q) for q in texts]
    in_context = [build_prompt(tokenizer, q, context) for q in texts]
    shine.generate_adapter(context, adapter_names="bench")  # first use wraps the base in a PeftModel
    names = iter(f"bench_new_{i}" for i in range(repeats + 1))
    started = median_seconds(lambda: shine.generate_adapter(context, adapter_names=next(names)), repeats)
    model = shine.peft_model
    for i in range(repeats + 1):
        model.delete_adapter(f"bench_new_{i}")
    model.set_adapter("bench")

    def per_question(items: list[str], adapter: str | None) -> float:
        return median_seconds(lambda: [_answer(model, tokenizer, p, new_tokens, adapter) for p in items],
                              repeats) / len(items)

    result = {
        "generation_s": started,  # a new named adapter per context (module creation included)
        "question_only_s": per_question(prompts, BASE_ADAPTER),
        "adapter_unmerged_s": per_question(prompts, None),
        "in_context_s": per_question(in_context, BASE_ADAPTER),
    }
    model.merge_adapter()
    try:
        result["adapter_merged_s"] = per_question(prompts, None)
    finally:
        model.unmerge_adapter()
    gap = result["in_context_s"] - result["adapter_merged_s"]
    result["break_even_questions"] = result["generation_s"] / gap if gap > 0 else None
    result["context_tokens"] = len(tokenizer(context, add_special_tokens=False).input_ids)
    result["new_tokens"] = new_tokens
    return result


def cost_of_k_questions(latency: dict, ks: list[int]) -> list[dict]:
    """Total seconds for k questions about one context, per method."""
    return [{"k": k,
             "adapter_merged_s": latency["generation_s"] + k * latency["adapter_merged_s"],
             "adapter_unmerged_s": latency["generation_s"] + k * latency["adapter_unmerged_s"],
             "in_context_s": k * latency["in_context_s"],
             "question_only_s": k * latency["question_only_s"]} for k in ks]
