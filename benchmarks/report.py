"""Benchmark results → JSON, a markdown table and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from peft_shine.io_utils import atomic_write_text


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "–" if value is None else str(value)


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The README's performance section body."""
    info = results["machine"]
    parts = [f"Machine: {info['cpu_count']} CPUs, {info['torch_threads']} torch threads, fp32, torch {info['torch']},"
             f" transformers {info['transformers']}, peft {info['peft']}. Medians after warm-up.", ""]
    parts += ["**Adapter generation vs the base model's prefill of the same context**", "",
              table(results["generation"], ["context_tokens", "prefill_s", "generate_lora_s", "generate_adapter_s",
                                            "lora_over_prefill", "adapter_over_prefill"]), ""]
    parts += ["**Generation throughput**", "",
              table(results["throughput"], ["batch_size", "context_tokens", "contexts_per_second"]), ""]
    latency = results["answering"]
    parts += ["**Seconds per question** (batch 1, same number of generated tokens for every method)", "",
              table([latency], ["context_tokens", "new_tokens", "question_only_s", "adapter_unmerged_s",
                                "adapter_merged_s", "in_context_s", "generation_s", "break_even_questions"]), "",
              table(results["k_questions"], ["k", "adapter_merged_s", "adapter_unmerged_s", "in_context_s"]), ""]
    parts += ["**Training step and per-context fine-tuning**", "",
              table([results["training_step"]], ["context_tokens", "conversation_tokens", "shine_step_s",
                                                 "peft_lora_step_s", "ratio", "trainable_parameters"]), "",
              table([results["finetune"]], ["context_tokens", "adapter_loss", "finetune_steps", "reached",
                                            "finetune_s", "generation_s", "time_ratio"]), ""]
    if "effects" in results:
        effects = results["effects"]
        parts += ["**Effect of single optimisations** (same run)", "",
                  table([effects["logits_only_at_labels"]], ["conversation_tokens", "label_tokens", "all_positions_s",
                                                             "labelled_positions_s", "speedup"]), "",
                  table([effects["adapter_export"]], ["peft_add_adapter_s", "direct_new_s", "in_place_s", "hotswap_s",
                                                      "fastest"]), ""]
    if "many_contexts" in results:
        parts += ["**Many contexts in one `generate_adapter` call** (time linear in the count)", "",
                  table(results["many_contexts"], ["contexts", "seconds", "per_context_s"]), ""]
    parts += ["**Peak memory** (resident-memory increase during the operation, sampled every 2 ms, fresh process each, after a warm-up call)", "",
              table(results["memory"], ["kind", "context_tokens", "increase_mib"]), ""]
    return "\n".join(parts)


def plots(results: dict, folder: Path) -> list[Path]:
    """Generation/prefill ratio and memory against context length; per-question latency bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    gen = results["generation"]
    lengths = [r["context_tokens"] for r in gen]
    axes[0].plot(lengths, [r["lora_over_prefill"] for r in gen], "o-", label="generate_lora / prefill")
    axes[0].plot(lengths, [r["adapter_over_prefill"] for r in gen], "s-", label="generate_adapter / prefill")
    axes[0].axhline(1.0, color="grey", ls=":", label="physical limit")
    axes[0].set(xscale="log", xlabel="context tokens", ylabel="time ratio", title="Adapter generation cost")
    axes[0].legend()
    latency = results["answering"]
    names = ["question_only_s", "adapter_merged_s", "adapter_unmerged_s", "in_context_s"]
    axes[1].bar([n.removesuffix("_s").replace("_", "\n") for n in names], [latency[n] for n in names])
    axes[1].set(ylabel="seconds per question", title=f"Answering ({latency['new_tokens']} new tokens)")
    for kind in ("generate", "prefill"):
        rows = [r for r in results["memory"] if r["kind"] == kind]
        axes[2].plot([r["context_tokens"] for r in rows], [r["increase_mib"] for r in rows], "o-", label=kind)
    axes[2].set(xscale="log", xlabel="context tokens", ylabel="peak increase (MiB)", title="Memory")
    axes[2].legend()
    for axis in (axes[0], axes[2]):
        axis.set_xticks(lengths, [str(n) for n in lengths])
        axis.minorticks_off()
    figure.tight_layout()
    path = folder / "benchmarks.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [path]


def write(results: dict, folder: Path) -> None:
    """results.json, results.md and benchmarks.png in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=2))
    atomic_write_text(folder / "results.md", markdown(results))
    plots(results, folder)
