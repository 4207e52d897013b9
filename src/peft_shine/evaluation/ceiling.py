"""The capacity ceiling of a generated adapter: a LoRA of the same shape fitted to each context by gradient descent.

For every held-out example (a context and its questions), a LoRA with exactly the generated adapter's rank, target
modules and scale is optimised directly on that example's answer loss — the training objective of the
hypernetwork (cross-entropy and/or the distillation KL to the in-context teacher) — until the loss stops
improving. It is trained and scored on the same tokens, so it is an upper bound of what an adapter of this shape
can hold, not a baseline: if the hypernetwork's adapters sit far above it, the generator is the limit; if the
ceiling itself is high, the rank is.

    python -m peft_shine.evaluation.ceiling --hypernetwork src/peft_shine/shipped/shine-smollm2-135m-instruct \\
        --data squad:train --contexts 8 --objective kd+ce --output ceiling.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from peft_shine.auto import AutoShineModel
from peft_shine.hypernetwork.lora_binding import LoraWeights
from peft_shine.hypernetwork.losses import topk_kl
from peft_shine.qa_data import load_qa_source
from peft_shine.training.collate import ShineDataCollator
from peft_shine.training.trainer import ShineTrainingArguments, build_dataset


def fresh_lora(shine, generator: torch.Generator) -> LoraWeights:
    """A trainable LoRA shaped like one generated adapter: ``A`` small random, ``B`` zero (an exact no-op)."""
    config, layers = shine.config, shine.config.num_base_layers
    pairs = []
    for fan_in, fan_out in config.module_shapes:
        a = torch.randn(1, layers, fan_in, config.lora_rank, generator=generator) / math.sqrt(fan_in)
        pairs.append((a.requires_grad_(), torch.zeros(1, layers, config.lora_rank, fan_out, requires_grad=True)))
    return LoraWeights(pairs, scale=1.0)


def answer_scores(shine, lora: LoraWeights | None, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Mean cross-entropy and mean teacher KL (0 without targets) of the answer tokens with ``lora`` bound."""
    logits, targets, _ = shine.answer_logits(lora, batch["input_ids"], batch["labels"], batch["attention_mask"])
    logits = logits.float()
    ce = torch.nn.functional.cross_entropy(logits, targets)
    kd = (topk_kl(logits, batch["teacher_topk_ids"], batch["teacher_topk_logprobs"]).mean()
          if "teacher_topk_ids" in batch else ce.new_zeros(()))
    return ce, kd


def fit_ceiling(shine, batch: dict[str, torch.Tensor], loss_weights: tuple[float, float] = (1.0, 1.0),
                max_steps: int = 300, learning_rate: float = 3e-3, patience: int = 25, seed: int = 0) -> dict:
    """Fit one LoRA to one example (a batch of one conversation) until its loss has not improved by 0.5 % for
    ``patience`` steps; returns the best ``{"ce", "kd", "steps"}``."""
    lora = fresh_lora(shine, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW([t for pair in lora.pairs for t in pair], lr=learning_rate, weight_decay=0.0)
    best, best_step, step = None, 0, 0
    for step in range(1, max_steps + 1):
        ce, kd = answer_scores(shine, lora, batch)
        loss = loss_weights[0] * ce + loss_weights[1] * kd
        if best is None or loss.item() < best["loss"] * 0.995:
            best, best_step = {"loss": loss.item(), "ce": ce.item(), "kd": kd.item()}, step
        if step - best_step >= patience:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"ce": best["ce"], "kd": best["kd"], "steps": step}


def ceiling_table(shine, examples: Iterable[dict[str, torch.Tensor]], **fit_options) -> dict:
    """Per-example and mean ceiling scores beside the generated adapter's scores on the same examples."""
    rows = []
    for batch in tqdm(list(examples), desc="LoRA ceiling"):
        with torch.no_grad():
            generated = answer_scores(shine, shine.generate_lora(batch["context_input_ids"],
                                                                 batch["context_attention_mask"]), batch)
        fitted = fit_ceiling(shine, batch, **fit_options)
        rows.append({"generated_ce": generated[0].item(), "generated_kd": generated[1].item(),
                     "ceiling_ce": fitted["ce"], "ceiling_kd": fitted["kd"], "ceiling_steps": fitted["steps"]})
    means = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}
    return {"mean": means, "examples": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypernetwork", required=True)
    parser.add_argument("--data", default="squad:train", help="QA data (first --contexts distinct contexts)")
    parser.add_argument("--contexts", type=int, default=8)
    parser.add_argument("--objective", choices=["ce", "kd", "kd+ce"], default="kd+ce")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--output", default="ceiling.json")
    args = parser.parse_args(argv)
    shine = AutoShineModel.from_pretrained(args.hypernetwork)
    records = load_qa_source(args.data)
    first = set(list(dict.fromkeys(r.context for r in records))[: args.contexts])
    training = ShineTrainingArguments(output_dir="runs/ceiling", stage="instruct", qa_mode="multi", report_to="none",
                                      max_context_length=512, max_conversation_length=320, objective=args.objective)
    dataset = build_dataset(training, shine.tokenizer, [r for r in records if r.context in first], teacher=shine,
                            distill=True, held_out=True)
    collate = ShineDataCollator(shine.tokenizer.pad_token_id)
    table = ceiling_table(shine, (collate([example]) for example in dataset), loss_weights=training.loss_weights,
                          max_steps=args.max_steps)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(table, handle, indent=2)
    print(json.dumps(table["mean"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
