"""Chat prompts, batched greedy answering and the adapter / question-only / in-context comparison, shared by the
quickstart, chat, the evaluation harness and the demo.

One prompt format everywhere, in stage-2 training and at inference: the base model's own chat template, the
`ANSWER_SYSTEM_PROMPT` as system turn, the question as the user turn, and (for the in-context baseline only) the
context in the user turn before the question. The system turn asks every condition for a short answer, as SHINE's
single-QA baselines do: without it an instruct model answers extractive questions in whole
sentences and token F1 measures verbosity more than knowledge. The one exception is `build_instruction_prompt`, the
stage-1 format (no short-answer system turn), which the recall evaluation uses to ask an adapter for its context.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase


BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in mixed batches
IN_CONTEXT_TEMPLATE = "Reference:\n{context}\n\nBased on the reference, answer this question:\n{question}"
ANSWER_SYSTEM_PROMPT = "You are a concise assistant. Reply with only the final answer, in a few words."


def answer_system_message() -> dict[str, str]:
    """The system turn that opens every question-answering chat (training and inference)."""
    return {"role": "system", "content": ANSWER_SYSTEM_PROMPT}


def build_prompt(tokenizer: PreTrainedTokenizerBase, question: str, context: str | None = None,
                 history: Sequence[Mapping[str, str]] = ()) -> str:
    """The chat prompt for a question, ending with the assistant generation prompt. ``history``: earlier
    ``{"role": "user" | "assistant", "content"}`` turns of the same chat (other roles are skipped)."""
    content = question if context is None else IN_CONTEXT_TEMPLATE.format(context=context, question=question)
    turns = [{"role": m["role"], "content": m["content"]} for m in history if m.get("role") in ("user", "assistant")]
    messages = [answer_system_message(), *turns, {"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_instruction_prompt(tokenizer: PreTrainedTokenizerBase, instruction: str) -> str:
    """The stage-1 chat prompt: ``instruction`` as the only user turn, after the chat template's default system turn
    (if it has one), NOT the short-answer system turn of `build_prompt`, ending with the assistant generation
    prompt. It equals the prompt part of a stage-1 reconstruction or completion exchange
    (`data.conversation_turns`)."""
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    adapter_names: Sequence[str] | None = None,
    max_new_tokens: int = 32,
) -> list[str]:
    """Greedy answers for a batch of prompts (left-padded). With a `PeftModel`, ``adapter_names`` picks an adapter
    per row (``"__base__"`` = the base model alone); the decoded text excludes the prompt and special tokens."""
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous_side
    device = next(model.parameters()).device
    kwargs = {"adapter_names": list(adapter_names)} if adapter_names is not None else {}
    output = model.generate(**batch.to(device), max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id, **kwargs)
    new_tokens = output[:, batch["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


COMPARISON = {  # condition -> what a front end calls it
    "adapter": "adapter (no context in prompt)",
    "question_only": "question only (base model)",
    "in_context": "context in prompt (base model)",
}


@dataclass
class Comparison:
    """Answers to the same questions by the generated adapter (no context in its prompt), the base model alone, and
    the base model with the context in its prompt; ``seconds`` per condition when timed."""

    answers: dict[str, list[str]]
    seconds: dict[str, float] = field(default_factory=dict)


def compare_answers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str],
                    context: str, adapter_name: str = "default", *, history: Sequence[Mapping[str, str]] = (),
                    max_new_tokens: int = 32, timed: bool = False) -> Comparison:
    """The three-way comparison of the quickstart, ``shine chat --compare`` and the demo. ``history`` goes into the
    adapter's prompts only (the chat so far). Untimed, everything is one mixed-adapter batch; timed, one batch per
    condition, so that each condition's time can be reported."""
    prompts = {
        "adapter": [build_prompt(tokenizer, q, history=history) for q in questions],
        "question_only": [build_prompt(tokenizer, q) for q in questions],
        "in_context": [build_prompt(tokenizer, q, context) for q in questions],
    }
    names = {"adapter": adapter_name, "question_only": BASE_ADAPTER, "in_context": BASE_ADAPTER}
    if not timed:
        flat = [p for condition in COMPARISON for p in prompts[condition]]
        rows = [names[condition] for condition in COMPARISON for _ in questions]
        answers = generate_answers(model, tokenizer, flat, rows, max_new_tokens)
        count = len(questions)
        return Comparison({c: answers[i * count:(i + 1) * count] for i, c in enumerate(COMPARISON)})
    comparison = Comparison({})
    for condition in COMPARISON:
        started = time.perf_counter()
        comparison.answers[condition] = generate_answers(model, tokenizer, prompts[condition],
                                                         [names[condition]] * len(questions), max_new_tokens)
        comparison.seconds[condition] = time.perf_counter() - started
    return comparison
