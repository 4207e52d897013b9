"""A short bf16 training burst of the SmolLM2 hypernetwork, continuing from the shipped weights, that needs no
``datasets`` (the GPU machine has torch, transformers, peft and accelerate only): stage-2 QA examples from the
bundled SQuAD training sample, tokenised into plain lists, through `ShineTrainer` (the same loop as ``shine train``).

    python -m benchmarks.gpu_burst --base /tmp/shine-gpu/SmolLM2-135M-Instruct --steps 200 --output /tmp/burst

The base is loaded in bf16 and frozen, the hypernetwork keeps fp32 master weights and runs under bf16 autocast
(``bf16=True``). Held-out loss (adapter, no adapter, wrong context) is evaluated before and after on the bundled
SQuAD evaluation sample; ``burst.json`` in the output folder holds the losses, steps/s and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.loading import resolve_placement
from peft_shine.modeling_shine import ShineModel
from peft_shine.qa_data import QARecord, bundled_path, sample_indices
from peft_shine.shipped import shipped_checkpoint
from peft_shine.storage.base_models import load_base_model
from peft_shine.training.data import build_qa_examples, encode_conversation
from peft_shine.training.trainer import ShineTrainer, ShineTrainingArguments


def encode_examples(examples: list[dict], tokenizer, max_context: int, max_conversation: int) -> list[dict]:
    """`tokenize_examples` without ``datasets``: a list of tokenised examples (those with a labelled token)."""
    encoded = []
    for example in examples:
        input_ids, labels, _ = encode_conversation(tokenizer, example["messages"], max_conversation)
        context = tokenizer(example["context"], add_special_tokens=False)["input_ids"][:max_context]
        if input_ids and context:
            encoded.append({"context_input_ids": context, "input_ids": input_ids, "labels": labels})
    return encoded


def read_records(name: str, limit: int | None, seed: int) -> list[QARecord]:
    """A bundled QA sample read line by line (`load_qa_records` goes through ``datasets``)."""
    lines = bundled_path(name).read_text(encoding="utf-8").splitlines()
    records = [QARecord.from_dict(json.loads(line), index=i) for i, line in enumerate(lines) if line.strip()]
    return [records[i] for i in sample_indices(len(records), limit, seed)]


def qa_set(tokenizer, name: str, limit: int | None, args: ShineTrainingArguments) -> list[dict]:
    records = read_records(name, limit, args.seed)
    examples = build_qa_examples(records, tokenizer, args.max_context_length, mode="single",
                                 num_distractors=args.num_distractors, seed=args.seed)
    return encode_examples(examples, tokenizer, args.max_context_length, args.max_conversation_length)


def training_arguments(args: argparse.Namespace, bf16: bool) -> ShineTrainingArguments:
    return ShineTrainingArguments(
        output_dir=args.output, stage="instruct", init_from=args.init_from, bf16=bf16, use_cpu=args.device == "cpu",
        max_steps=args.steps, per_device_train_batch_size=args.batch, per_device_eval_batch_size=args.batch,
        learning_rate=args.learning_rate, warmup_steps=min(10, args.steps), lr_scheduler_type="constant_with_warmup",
        max_context_length=512, max_conversation_length=320, num_distractors=1, logging_steps=max(1, args.steps // 20),
        eval_strategy="steps", eval_steps=args.steps, eval_on_start=True, save_strategy="no", report_to="none",
        disable_tqdm=True, seed=args.seed, dataloader_num_workers=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    placement = resolve_placement(args.device, args.dtype)
    base, tokenizer = load_base_model(args.base, dtype=placement.dtype)
    config = ShineConfig.from_pretrained(args.init_from)
    shine = ShineModel(config).attach_base_model(base, tokenizer)  # weights: ShineTrainer loads init_from
    training = training_arguments(args, bf16=placement.dtype == torch.bfloat16)
    train_set = qa_set(tokenizer, "squad_train_sample.jsonl", args.train_limit, training)
    eval_set = qa_set(tokenizer, "squad_sample.jsonl", args.eval_limit, training)
    trainer = ShineTrainer(shine, training, train_dataset=train_set, eval_dataset=eval_set)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(args.output)
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    tokens = sum(len(e["context_input_ids"]) + len(e["input_ids"]) for e in train_set) / len(train_set)
    summary = {"steps": trainer.state.global_step, "seconds": seconds, "steps_per_s": trainer.state.global_step / seconds,
               "approx_tokens_per_s": tokens * args.batch * trainer.state.global_step / seconds,
               "device": placement.describe(), "train_examples": len(train_set), "eval_examples": len(eval_set),
               "eval_before": evals[0] if evals else None, "eval_after": evals[-1] if evals else None,
               "skipped_steps": trainer.skipped_steps, "nonfinite_losses": trainer.nonfinite_losses,
               "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
               "loss_history": [e for e in trainer.state.log_history if "loss" in e]}
    Path(args.output, "burst.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the SmolLM2-135M-Instruct folder (reassembled + converted)")
    parser.add_argument("--init-from", default=str(shipped_checkpoint()), help="default: the shipped weights")
    parser.add_argument("--output", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--train-limit", type=int, default=None, help="at most this many training records")
    parser.add_argument("--eval-limit", type=int, default=64, help="held-out records evaluated")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    result = run(parse_args())
    print(json.dumps({k: v for k, v in result.items() if k != "loss_history"}, indent=2))
