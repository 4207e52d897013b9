"""Per-context fine-tuning against the generated adapter, on held-out answers (the "SFT ratio").

Definition. For each context (a paragraph of the bundled SQuAD dev sample, which the shipped hypernetwork never
trained on) with its questions and gold answers:

1. ``adapter_loss``: the generated adapter's answer loss on that context's questions: mean over its questions of
   the cross-entropy of the gold answer (first answer, chat format of `peft_shine.prompting`, question only in the
   prompt, loss on the answer tokens and the end-of-turn token).
2. A plain peft LoRA of the same rank and target modules (standard init, ``B = 0``, AdamW, lr 2e-3) is fitted on
   what a user has without labelled questions: the context itself, as the reconstruction exchange of
   `peft_shine.evaluation.sft` ("Repeat the text." → the context). After every step its answer loss on the same
   held-out questions is measured (not counted in its time).
3. ``finetune_steps`` / ``finetune_s``: the steps (and training seconds) until that loss is at most
   ``adapter_loss``; ``reached`` is false when ``max_steps`` pass first. ``time_ratio = finetune_s /
   generation_s`` with ``generation_s`` the median ``generate_adapter`` time of the same context.

The questions never reach either adapter's training: the hypernetwork reads the context once, the LoRA fits the
context; both are scored on the answers.
"""

from __future__ import annotations

import statistics
import time

import torch

from peft_shine.evaluation.sft import reconstruction_batch
from peft_shine.prompting import answer_system_message
from peft_shine.qa_data import QARecord, load_qa_records
from peft_shine.training.data import conversation_turns

from .bench_training import _fresh_peft_model
from .timing import median_seconds


def contexts_with_questions(count: int, min_questions: int = 3) -> list[list[QARecord]]:
    """The first ``count`` SQuAD dev paragraphs with at least ``min_questions`` questions, records grouped."""
    groups: dict[str, list[QARecord]] = {}
    for record in load_qa_records("squad"):
        groups.setdefault(record.context, []).append(record)
    return [records for records in groups.values() if len(records) >= min_questions][:count]


def answer_batches(tokenizer, records: list[QARecord]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(input_ids, labels)`` per question: the answer chat with the question only, labels on the answer."""
    batches = []
    for record in records:
        messages = [answer_system_message(), {"role": "user", "content": record.question},
                    {"role": "assistant", "content": record.answers[0]}]
        (ids, labels), = conversation_turns(tokenizer, messages)
        batches.append((torch.tensor([ids]), torch.tensor([labels])))
    return batches


@torch.no_grad()
def answer_loss(model, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean over questions of the answer cross-entropy under ``model`` (its active adapter)."""
    return statistics.fmean(model(input_ids=ids, labels=labels, use_cache=False).loss.item() for ids, labels in batches)


def finetune_one(shine, records: list[QARecord], peft_model, max_steps: int, learning_rate: float) -> dict:
    """The comparison for one context (see the module docstring); ``peft_model`` is a fresh trainable LoRA."""
    tokenizer, context = shine.tokenizer, records[0].context
    batches = answer_batches(tokenizer, records)
    model = shine.generate_adapter(context, adapter_names="finetune_bench")
    target = answer_loss(model, batches)
    generation_s = median_seconds(lambda: shine.generate_adapter(context, adapter_names="finetune_bench"), 3)
    conversation, labels = reconstruction_batch(tokenizer, context)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=learning_rate)
    loss, steps, seconds = answer_loss(peft_model, batches), 0, 0.0
    start_loss = best = loss
    while steps < max_steps and loss > target:
        started = time.perf_counter()
        peft_model(input_ids=conversation, labels=labels, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - started
        steps += 1
        loss = answer_loss(peft_model, batches)
        best = min(best, loss)
    return {"context_tokens": len(tokenizer(context, add_special_tokens=False).input_ids), "questions": len(records),
            "base_loss": start_loss, "adapter_loss": target, "finetune_loss": loss, "best_finetune_loss": best,
            "finetune_steps": steps,
            "reached": loss <= target, "finetune_s": seconds, "generation_s": generation_s,
            "time_ratio": seconds / generation_s}


def finetune_vs_adapter(shine, contexts: int, max_steps: int, learning_rate: float = 2e-3) -> list[dict]:
    """`finetune_one` on ``contexts`` SQuAD paragraphs, each with a fresh LoRA on a separately loaded base."""
    rows = []
    for records in contexts_with_questions(contexts):
        torch.manual_seed(0)
        rows.append(finetune_one(shine, records, _fresh_peft_model(shine), max_steps, learning_rate))
    shine.delete_adapters("finetune_bench")
    return rows
