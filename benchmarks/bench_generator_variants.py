"""Cheaper generators, side by side: fewer memory slots (a subset of the target modules) and a shallower M2P,
against the shipped layout, each warm-started from the same trained hypernetwork.

    python -m benchmarks.bench_generator_variants [--lengths 128,512] [--repeats 3] [--quick]
        [--hypernetwork DIR] [--output benchmarks/results/generator_variants.json]

Per variant, every number timed in turns with the others (`interleaved_medians`), on the same base model:

* ``generate_adapter`` seconds at each context length, and its ratio to the base's plain prefill of the same
  context (the prefill timed in the same rounds);
* seconds per training example of a stage-2 step (both passes, backward, AdamW) at the CPU recipes' shapes;
* memory slots, M2P GFLOP per context, hypernetwork parameters and checkpoint MB.

What a variant *learns* is not measured here: its warm start is `peft_shine.training.warm_start.resize_hypernetwork`,
and its quality is the context-specific gap of a training run at equal CPU time (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from peft_shine.adapters.store import all_adapters_disabled
from peft_shine.shipped import load_hypernetwork
from peft_shine.training.warm_start import resize_hypernetwork

from .bench_bf16 import training_step
from .bench_breakdown import m2p_flops
from .timing import interleaved_medians, machine_info
from .workloads import context_of_length


ATTENTION = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
MLP = ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
VARIANTS: dict[str, dict] = {
    "shipped": {},
    "m2p_1_layer": {"m2p_num_layers": 1},
    "attention_only": {"target_modules": ATTENTION},
    "attention_only_m2p_1_layer": {"target_modules": ATTENTION, "m2p_num_layers": 1},
    "mlp_only": {"target_modules": MLP},
}
# (context tokens, conversation tokens, contexts per step): the stage-2 CPU recipes of configs/
TRAINING_SHAPES = {"stage2": (512, 320, 1), "stage2_batch4": (256, 160, 4)}


def build_variants(shine, names: list[str]) -> dict:
    """Every named variant, resized from ``shine`` (which is the ``shipped`` variant itself)."""
    return {name: shine if not VARIANTS[name] else resize_hypernetwork(shine, **VARIANTS[name]) for name in names}


def describe(shine) -> dict:
    """Size of a variant: slots, M2P GFLOP per context, parameters, checkpoint MB (fp32)."""
    params = sum(p.numel() for p in shine.hypernetwork_parameters())
    return {"memory_slots": shine.config.num_memory_slots, "m2p_layers": shine.config.m2p_num_layers,
            "target_modules": len(shine.config.target_modules), "m2p_gflop": m2p_flops(shine) / 1e9,
            "parameters_m": params / 1e6, "checkpoint_mb": params * 4 / 1e6}


def prefill_call(shine, text: str) -> Callable[[], object]:
    """The base's plain prefill of ``text`` (KV cache, last logit only), every adapter off."""
    ids = shine.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids

    def run() -> None:
        with torch.inference_mode(), all_adapters_disabled(shine.base_lm):
            shine.base_lm(input_ids=ids, use_cache=True, logits_to_keep=1)
    return run


def generation_rows(models: dict, lengths: list[int], repeats: int) -> list[dict]:
    """Per context length: the plain prefill and every variant's ``generate_adapter``, timed in turns."""
    rows, any_model = [], next(iter(models.values()))
    for tokens in lengths:
        text = context_of_length(any_model.tokenizer, tokens)
        calls = {"prefill": prefill_call(any_model, text)}
        for name, shine in models.items():
            shine.eval().generate_adapter(text, adapter_names=f"variant-{name}")  # later calls copy in place
            calls[name] = lambda s=shine, n=name, t=text: s.generate_adapter(t, adapter_names=f"variant-{n}")
        seconds = interleaved_medians(calls, repeats)
        rows.append({"context_tokens": tokens, "prefill_s": seconds["prefill"],
                     **{f"{name}_s": seconds[name] for name in models},
                     **{f"{name}_over_prefill": seconds[name] / seconds["prefill"] for name in models}})
    return rows


def training_rows(models: dict, repeats: int, shapes: dict = TRAINING_SHAPES) -> list[dict]:
    """Seconds per training example of every variant at each stage-2 shape, timed in turns."""
    rows = []
    for recipe, shape in shapes.items():
        steps = {name: training_step(shine, *shape) for name, shine in models.items()}
        seconds = interleaved_medians(steps, repeats)
        per_example = {name: value / shape[2] for name, value in seconds.items()}
        rows.append({"recipe": recipe, **{f"{name}_s_per_example": v for name, v in per_example.items()},
                     **{f"{name}_speedup": per_example["shipped"] / v for name, v in per_example.items()}})
    return rows


def compare_variants(hypernetwork: str | None = None, names: list[str] | None = None, lengths: list[int] = (128, 512),
                     repeats: int = 3, quick: bool = False) -> dict:
    """The whole comparison on ``hypernetwork`` (default: the shipped one), fp32."""
    shine = load_hypernetwork(hypernetwork, dtype=torch.float32).model
    models = build_variants(shine, names or list(VARIANTS))
    shapes = {"stage2_short": (64, 64, 1)} if quick else TRAINING_SHAPES
    result = {"threads": torch.get_num_threads(), "sizes": {name: describe(m) for name, m in models.items()},
              "generate_adapter": generation_rows(models, list(lengths), 1 if quick else repeats),
              "training": training_rows(models, 1 if quick else repeats, shapes)}
    for name, model in models.items():
        model.delete_adapters(f"variant-{name}")
    return result


def markdown(result: dict) -> str:
    """One table: a row per variant with its size, generation ratios and training speed-ups."""
    lengths = [row["context_tokens"] for row in result["generate_adapter"]]
    recipes = [row["recipe"] for row in result["training"]]
    header = (["variant", "slots", "M2P layers", "M2P GFLOP", "params (M)"]
              + [f"generate / prefill @{n}" for n in lengths] + [f"training {r} speed-up" for r in recipes])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, size in result["sizes"].items():
        cells = [name, size["memory_slots"], size["m2p_layers"], f"{size['m2p_gflop']:.1f}",
                 f"{size['parameters_m']:.2f}"]
        cells += [f"{row[f'{name}_over_prefill']:.2f}" for row in result["generate_adapter"]]
        cells += [f"{row[f'{name}_speedup']:.2f}×" for row in result["training"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypernetwork", default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {list(VARIANTS)}")
    parser.add_argument("--lengths", default="128,512", help="context lengths for generate_adapter")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--quick", action="store_true", help="one short training shape, one round (smoke test)")
    parser.add_argument("--output", default="benchmarks/results/generator_variants.json")
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",")]
    result = {"machine": machine_info(), **compare_variants(args.hypernetwork, args.variants.split(","), lengths,
                                                            args.repeats, args.quick)}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
