"""Chat prompts and batched greedy answering, shared by the quickstart, the evaluation harness and the demo.

One prompt format everywhere: the base model's own chat template, the question as the user turn, and (for the
in-context baseline only) the context in the user turn before the question.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase


BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in mixed batches
IN_CONTEXT_TEMPLATE = "Reference:\n{context}\n\nBased on the reference, answer this question:\n{question}"


def build_prompt(tokenizer: PreTrainedTokenizerBase, question: str, context: str | None = None) -> str:
    """The chat prompt for a question, ending with the assistant generation prompt."""
    content = question if context is None else IN_CONTEXT_TEMPLATE.format(context=context, question=question)
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)


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
