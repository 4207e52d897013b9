"""Run every benchmark on the embedded default base and write JSON, markdown and plots.

    python -m benchmarks.run [--quick] [--output benchmarks/results] [--hypernetwork DIR] [--many-contexts-1000]
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch

from peft_shine.shipped import load_hypernetwork

from . import (
    bench_answering,
    bench_bf16,
    bench_breakdown,
    bench_effects,
    bench_finetune,
    bench_generation,
    bench_long_context,
    bench_many_contexts,
    bench_serving,
    bench_training,
    memory_probe,
    report,
)
from .timing import machine_info


def sections(shine, args) -> list[tuple[str, object]]:
    """``(name, run)`` of every benchmark, sized by ``--quick``."""
    quick, hypernetwork = args.quick, args.hypernetwork
    repeats = 2 if quick else 5
    lengths = [64, 128, 256] if quick else [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    memory_lengths = [128, 256] if quick else [128, 256, 512, 1024, 2048]
    return [
        ("breakdown", lambda: bench_breakdown.breakdown(shine, lengths, 1 if quick else 3)),
        ("throughput", lambda: bench_generation.mixed_throughput(shine, [1, 4] if quick else [1, 4, 16, 64],
                                                                 4 if quick else 64, 64, 256 if quick else 512)),
        ("answering", lambda: bench_answering.answer_latency(shine, 2 if quick else 4, 16, repeats)),
        ("serving", lambda: bench_serving.rows_latency(shine, [1, 4] if quick else [1, 8, 32], 8, 1 if quick else 3)),
        ("break_even", lambda: bench_serving.break_even(shine, [256] if quick else [256, 512, 1024, 2048, 4096], 8,
                                                        1 if quick else 3)),
        ("bf16", lambda: bench_bf16.bf16_vs_fp32(hypernetwork, quick)),
        ("training_step", lambda: bench_training.training_step_ratio(shine, 256, 96, repeats)),
        ("finetune", lambda: bench_finetune.finetune_vs_adapter(shine, 1 if quick else 3, 3 if quick else 100)),
        ("effects", lambda: {"logits_only_at_labels": bench_effects.logits_only_at_labels(shine, 96, repeats),
                             "adapter_export": bench_effects.adapter_export(shine, repeats)}),
        ("many_contexts", lambda: bench_many_contexts.many_contexts(
            lambda: shine, [10, 100, 1000] if args.many_contexts_1000 else [10, 100])),
        ("long_context", lambda: bench_long_context.long_context_rows(
            [512, 1024] if quick else [512, 1024, 2048, 4096, 8192, 16384, 32768], 0 if quick else 16)),
        ("chunk_batch", lambda: bench_long_context.chunk_batch_seconds(shine, 1024 if quick else 4096,
                                                                       repeats=1 if quick else 2)),
        ("memory", lambda: [memory_probe.measure(kind, n, hypernetwork)
                            for kind in ("generate", "prefill") for n in memory_lengths]
                   + [memory_probe.measure("train", 256, hypernetwork)]),
    ]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short lengths and few repeats (smoke test)")
    parser.add_argument("--output", default="benchmarks/results")
    parser.add_argument("--hypernetwork", default=None)
    parser.add_argument("--many-contexts-1000", action="store_true",
                        help="time generate_adapter on 1,000 contexts too (10 and 100 by default)")
    parser.add_argument("--only", default=None, help="comma-separated sections to (re)run into an existing results.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    loaded = load_hypernetwork(args.hypernetwork)
    shine, label = loaded.model, loaded.label
    trained_length = shine.config.max_context_length  # raised for the long rows (a limit, not a weight shape)
    results = {"machine": machine_info(), "date": datetime.date.today().isoformat(), "hypernetwork": label,
               "config": shine.config.to_diff_dict(), "trained_max_context_length": trained_length}
    steps = sections(shine, args)
    if args.only:
        previous = json.loads((Path(args.output) / "results.json").read_text())
        results = {**previous, "machine": machine_info(), "date": results["date"]}
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
