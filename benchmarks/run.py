"""Run every benchmark on the embedded default base and write JSON, markdown and plots.

    python -m benchmarks.run [--quick] [--output benchmarks/results] [--hypernetwork DIR] [--many-contexts-1000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from peft_shine.shipped import load_hypernetwork

from . import (
    bench_answering,
    bench_effects,
    bench_generation,
    bench_many_contexts,
    bench_training,
    memory_probe,
    report,
)
from .timing import machine_info


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short lengths and few repeats (smoke test)")
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--hypernetwork", default=None)
    parser.add_argument("--many-contexts-1000", action="store_true",
                        help="time generate_adapter on 1,000 contexts too (10 and 100 by default)")
    parser.add_argument("--only", default=None, help="comma-separated sections to (re)run into an existing results.json")
    args = parser.parse_args(argv)
    lengths = [128, 256] if args.quick else [128, 256, 512, 1024, 2048]
    repeats = 2 if args.quick else 5
    torch.manual_seed(0)
    loaded = load_hypernetwork(args.hypernetwork)
    shine, label = loaded.model, loaded.label
    shine.config.max_context_length = max(shine.config.max_context_length, max(lengths))
    results = {"machine": machine_info(), "hypernetwork": label, "config": shine.config.to_diff_dict()}
    steps = [
        ("generation", lambda: bench_generation.generation_vs_prefill(shine, lengths, repeats)),
        ("throughput", lambda: bench_generation.generation_throughput(shine, [1, 4] if args.quick else [1, 4, 16],
                                                                      256, repeats)),
        ("answering", lambda: bench_answering.answer_latency(shine, 2 if args.quick else 4, 16, repeats)),
        ("training_step", lambda: bench_training.training_step_ratio(shine, 256, 96, repeats)),
        ("finetune", lambda: bench_training.finetune_until_adapter_loss(shine, 256, 20 if args.quick else 300)),
        ("effects", lambda: {"logits_only_at_labels": bench_effects.logits_only_at_labels(shine, 96, repeats),
                             "adapter_export": bench_effects.adapter_export(shine, repeats)}),
        ("many_contexts", lambda: bench_many_contexts.many_contexts(
            lambda: shine, [10, 100, 1000] if args.many_contexts_1000 else [10, 100])),
        ("memory", lambda: [memory_probe.measure(kind, n, args.hypernetwork)
                            for kind in ("generate", "prefill") for n in lengths]
                   + [memory_probe.measure("train", 256, args.hypernetwork)]),
    ]
    if args.only:
        results = {**json.loads((Path(args.output) / "results.json").read_text()), "machine": machine_info()}
        steps = [(name, run) for name, run in steps if name in args.only.split(",")]
    for name, run in steps:
        print(f"[bench] {name} ...", flush=True)
        results[name] = run()
        print(json.dumps(results[name], indent=1)[:800], flush=True)
    results["k_questions"] = bench_answering.cost_of_k_questions(results["answering"], [1, 2, 5, 10, 20])
    report.write(results, Path(args.output))
    print(report.markdown(results))
    return results


if __name__ == "__main__":
    main()
