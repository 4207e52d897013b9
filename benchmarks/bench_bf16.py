"""bf16 against fp32 base weights on a CPU: seconds per training example of the stage-1 and stage-2 recipes at 1 and
2 threads, and the latency of `generate_adapter` and of answering, every pair timed in turns.

    python -m benchmarks.bench_bf16 [--quick] [--repeats N] [--hypernetwork DIR] [--output benchmarks/results/bf16.json]

The hypernetwork stays fp32 in both (master weights); only the frozen base LM changes dtype. Whether bf16 pays
depends on the CPU's bf16 matrix units (`peft_shine.storage.cpu_features`), recorded with the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from peft_shine.evaluation.sft import reconstruction_batch
from peft_shine.prompting import build_prompt
from peft_shine.shipped import load_hypernetwork
from peft_shine.storage.cpu_features import bf16_flags, bf16_matmul_speedup

from .bench_answering import _answer
from .timing import interleaved_medians, machine_info
from .workloads import context_of_length, squad_questions


# (context tokens, conversation tokens, contexts per step) at the limits of the CPU recipes in configs/
RECIPES = {"stage1": (256, 320, 1), "stage2": (512, 320, 1), "stage2_batch4": (256, 160, 4)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def training_step(shine, context_tokens: int, conversation_tokens: int, contexts: int):
    """One training step (both passes, backward, AdamW) on ``contexts`` contexts and their conversations."""
    tokenizer = shine.tokenizer
    ids, mask = shine.tokenize_contexts([context_of_length(tokenizer, context_tokens)] * contexts)
    conversation, labels = reconstruction_batch(tokenizer, context_of_length(tokenizer, conversation_tokens))
    conversation, labels = (t[:, :conversation_tokens].repeat(contexts, 1) for t in (conversation, labels))
    optimizer = torch.optim.AdamW(shine.hypernetwork_parameters(), lr=1e-7)

    def step() -> None:
        shine.train()
        loss = shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_seconds(models: dict, threads: list[int], repeats: int, recipes: dict = RECIPES) -> list[dict]:
    """Seconds per training example of every recipe, fp32 and bf16 timed in turns, at each thread count."""
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        for recipe, shape in recipes.items():
            steps = {name: training_step(shine, *shape) for name, shine in models.items()}
            seconds = interleaved_medians(steps, repeats)
            per_example = {name: value / shape[2] for name, value in seconds.items()}
            rows.append({"recipe": recipe, "threads": count, "context_tokens": shape[0],
                         "conversation_tokens": shape[1], "contexts_per_step": shape[2],
                         **{f"{name}_s_per_example": value for name, value in per_example.items()},
                         "speedup": per_example["fp32"] / per_example["bf16"]})
    return rows


def inference_seconds(models: dict, repeats: int, new_tokens: int = 16) -> dict:
    """`generate_adapter` on a SQuAD paragraph and one greedy answer of ``new_tokens`` with the adapter, fp32 and
    bf16 in turns."""
    context, questions = squad_questions(1)
    calls = {}
    for name, shine in models.items():
        shine.generate_adapter(context, adapter_names="bench")
        prompt = build_prompt(shine.tokenizer, questions[0])
        calls[f"generate_adapter_{name}"] = lambda s=shine: s.generate_adapter(context, adapter_names="bench")
        calls[f"answer_{name}"] = lambda s=shine, p=prompt: _answer(s.peft_model, s.tokenizer, p, new_tokens, None)
    seconds = interleaved_medians(calls, repeats)
    return {**{f"{key}_s": value for key, value in seconds.items()},
            "generate_adapter_speedup": seconds["generate_adapter_fp32"] / seconds["generate_adapter_bf16"],
            "answer_speedup": seconds["answer_fp32"] / seconds["answer_bf16"]}


def bf16_vs_fp32(hypernetwork: str | None = None, quick: bool = False, repeats: int = 3) -> dict:
    """The whole comparison (one model per dtype, both from ``hypernetwork`` or the shipped one)."""
    models = {name: load_hypernetwork(hypernetwork, dtype=dtype).model for name, dtype in DTYPES.items()}
    threads = torch.get_num_threads()
    repeats = 1 if quick else repeats
    recipes = {"stage1": (64, 64, 1)} if quick else RECIPES
    try:
        result = {"cpu_bf16_flags": bf16_flags(), "matmul_speedup": bf16_matmul_speedup(512),
                  "training": training_seconds(models, [1] if quick else [1, 2], repeats, recipes)}
        torch.set_num_threads(threads)
        result["inference"] = inference_seconds(models, repeats)
    finally:
        torch.set_num_threads(threads)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short recipe, one repeat (smoke test)")
    parser.add_argument("--hypernetwork", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--output", default="benchmarks/results/bf16.json")
    args = parser.parse_args(argv)
    result = {"machine": machine_info(), **bf16_vs_fp32(args.hypernetwork, args.quick, args.repeats)}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
