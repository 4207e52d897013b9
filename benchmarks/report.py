"""Benchmark results → JSON, a markdown table and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from peft_shine.storage.io_utils import atomic_write_text

from .bench_long_context import markdown as long_context_table


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
             f" transformers {info['transformers']}, peft {info['peft']}; {results.get('date', 'undated')};"
             f" {results['hypernetwork']}. Medians after warm-up.", ""]
    parts += ["**Adapter generation, stage by stage, against the base's prefill** (seconds)", "",
              table(results["breakdown"], ["context_tokens", "prefill_s", "prefill_slots_s", "tokenize_s",
                                           "encoder_s", "m2p_s", "slice_s", "export_s", "generate_adapter_s",
                                           "adapter_over_prefill", "adapter_over_prefill_slots"]), "",
              "FLOP model (GFLOP per context; the floor is (prefill + slots + M2P) over each baseline):", "",
              table(results["breakdown"], ["context_tokens", "prefill_gflop", "prefill_slots_gflop", "m2p_gflop",
                                           "floor_over_prefill", "floor_over_prefill_slots"]), ""]
    parts += ["**Generation throughput, mixed context lengths** (contexts/s)", "",
              table(results["throughput"], ["batch_size", "contexts", "context_tokens", "sorted_contexts_per_s",
                                            "unsorted_contexts_per_s", "sorted_tokens_per_s"]), ""]
    latency = results["answering"]
    parts += ["**Seconds per question** (batch 1, same number of generated tokens for every method)", "",
              table([latency], ["context_tokens", "new_tokens", "question_only_s", "adapter_unmerged_s",
                                "adapter_merged_s", "in_context_s", "generation_s", "break_even_questions"]), "",
              table(results["k_questions"], ["k", "adapter_merged_s", "adapter_unmerged_s", "in_context_s"]), ""]
    parts += ["**Serving many adapters** (seconds per batch of questions)", "",
              table(results["serving"], ["rows", "new_tokens", "base_s", "one_adapter_s", "one_adapter_merged_s",
                                         "mixed_s", "mixed_over_one"]), "",
              "**Break-even questions per context** (adapter generated + answers vs the context in the prompt)", "",
              table(results["break_even"], ["context_tokens", "generation_s", "adapter_merged_s", "in_context_s",
                                            "break_even_questions"]), ""]
    parts += ["**Training step and per-context fine-tuning**", "",
              table([results["training_step"]], ["context_tokens", "conversation_tokens", "shine_step_s",
                                                 "peft_lora_step_s", "ratio", "trainable_parameters"]), "",
              table(results["finetune"], ["context_tokens", "questions", "base_loss", "adapter_loss",
                                          "best_finetune_loss", "finetune_steps", "reached", "finetune_s",
                                          "generation_s", "time_ratio"]), ""]
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
    if "long_context" in results:
        parts += ["**Long documents: peak memory of chunked generation against the base's prefill** (MiB over the "
                  "loaded model, fresh process each; chunked cells: peak / peak minus the returned adapter)", "",
                  long_context_table(results["long_context"])]
    if "bf16" in results:
        bf16 = results["bf16"]
        parts += [f"**bf16 against fp32 base weights** (CPU bf16 flags {bf16['cpu_bf16_flags'] or 'none'}, one "
                  f"matmul {bf16['matmul_speedup']:.2f}× faster; timed in turns)", "",
                  table(bf16["training"], ["recipe", "threads", "context_tokens", "conversation_tokens",
                                           "contexts_per_step", "fp32_s_per_example", "bf16_s_per_example",
                                           "speedup"]), "",
                  table([bf16["inference"]], ["generate_adapter_fp32_s", "generate_adapter_bf16_s",
                                              "generate_adapter_speedup", "answer_fp32_s", "answer_bf16_s",
                                              "answer_speedup"]), ""]
    if "chunk_batch" in results:
        parts += ["**Chunks per encoder pass** (chunked `generate_adapter`, seconds, timed in turns)", "",
                  table(results["chunk_batch"], ["tokens", "chunks_per_pass", "threads", "seconds", "vs_fastest"]), ""]
    parts += ["**Peak memory** (resident-memory increase during the operation, sampled every 2 ms, fresh process each,"
              " after a warm-up call)", "", table(results["memory"], ["kind", "context_tokens", "increase_mib"]), ""]
    return "\n".join(parts)


def plots(results: dict, folder: Path) -> list[Path]:
    """Generation cost against both prefills, break-even questions per context, per-question latency bars and
    memory, against context length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    long_rows = results.get("long_context") or []
    figure, axes = plt.subplots(1, 5 if long_rows else 4, figsize=(25 if long_rows else 20, 4))
    rows = results["breakdown"]
    lengths = [r["context_tokens"] for r in rows]
    axes[0].plot(lengths, [r["adapter_over_prefill"] for r in rows], "o-", label="/ prefill (context)")
    axes[0].plot(lengths, [r["adapter_over_prefill_slots"] for r in rows], "s-", label="/ prefill (context + slots)")
    axes[0].plot(lengths, [r["floor_over_prefill"] for r in rows], ":", label="FLOP floor / prefill (context)")
    axes[0].axhline(1.1, color="grey", ls="--", label="aim 1.1")
    axes[0].set(xscale="log", xlabel="context tokens", ylabel="generate_adapter / prefill", title="Generation cost")
    axes[0].legend(fontsize=8)
    even = [r for r in results["break_even"] if r["break_even_questions"] is not None]
    axes[1].plot([r["context_tokens"] for r in even], [r["break_even_questions"] for r in even], "o-")
    axes[1].set(xscale="log", xlabel="context tokens", ylabel="questions per context",
                title="Break-even: adapter vs context in prompt")
    latency = results["answering"]
    names = ["question_only_s", "adapter_merged_s", "adapter_unmerged_s", "in_context_s"]
    axes[2].bar([n.removesuffix("_s").replace("_", "\n") for n in names], [latency[n] for n in names])
    axes[2].set(ylabel="seconds per question", title=f"Answering ({latency['new_tokens']} new tokens)")
    for kind in ("generate", "prefill"):
        memory = [r for r in results["memory"] if r["kind"] == kind]
        axes[3].plot([r["context_tokens"] for r in memory], [r["increase_mib"] for r in memory], "o-", label=kind)
    axes[3].set(xscale="log", xlabel="context tokens", ylabel="peak increase (MiB)", title="Memory")
    axes[3].legend()
    for axis, ticks in ((axes[0], lengths), (axes[1], [r["context_tokens"] for r in even]),
                        (axes[3], sorted({r["context_tokens"] for r in results["memory"]}))):
        axis.set_xticks(ticks, [str(n) for n in ticks])
        axis.minorticks_off()
    if long_rows:
        long_document_panel(axes[4], long_rows)
    figure.tight_layout()
    path = folder / "benchmarks.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [path]


def long_document_panel(axis, rows: list[dict]) -> None:
    """Peak memory against document length: the base's prefill and each chunked rule (peak minus the adapter), at
    the table's batch of chunks per pass, and ``mean`` at one chunk per pass."""
    curves = {"base prefill": [r for r in rows if r["kind"] == "prefill"]}
    batch = max((r["batch_size"] for r in rows if r["kind"] == "chunked"), default=1)
    for pinned in (False, True):
        for rule in ("mean", "cat", "svd"):
            curves[f"chunked {rule}{', pinned' if pinned else ''}"] = [
                r for r in rows if r["kind"] == "chunked" and r["combine"] == rule and r["batch_size"] == batch
                and r.get("pinned", False) == pinned]
    if batch > 1:
        curves["chunked mean, 1 chunk per pass"] = [r for r in rows if r["kind"] == "chunked" and r["batch_size"] == 1
                                                    and r["combine"] == "mean" and not r.get("pinned", False)]
    for label, curve in curves.items():
        if curve:
            axis.plot([r["tokens"] for r in curve], [r["increase_mib"] - r["adapter_mib"] for r in curve],
                      "s--" if "pinned" in label else "^:" if "1 chunk" in label else "o-", label=label)
    ticks = sorted({r["tokens"] for r in rows})
    axis.set(xscale="log", xlabel="document tokens", ylabel="peak minus adapter (MiB)",
             title=f"Long documents: memory ({batch} chunks per pass)")
    axis.set_xticks(ticks, [f"{round(n / 1024)}K" if n >= 1024 else str(n) for n in ticks])
    axis.minorticks_off()
    axis.legend(fontsize=8)


def write(results: dict, folder: Path) -> None:
    """results.json, results.md and benchmarks.png in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "results.json", json.dumps(results, indent=2))
    atomic_write_text(folder / "results.md", markdown(results))
    plots(results, folder)
