"""The evaluation report: ``results.json``, a markdown table and a bar chart of F1 and EM per condition (and ROUGE-L
for the recall conditions: its column and bars appear only when the run has them).

All three files are written atomically. The chart uses matplotlib's Agg canvas directly (no pyplot, no display,
no global backend switch).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft_shine.storage.io_utils import atomic_write_bytes, atomic_write_text


RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"
RESULTS_CHART = "results.png"

COLUMNS = ("condition", "n", "F1", "EM", "adapter s/context", "answer s/question", "prompt tokens")
ROUGE_COLUMN = "ROUGE-L"  # after EM, only in tables with a recall condition
METRICS = (("f1", "F1"), ("em", "EM"), ("rouge_l", ROUGE_COLUMN))  # aggregate key, label; plotted where present


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _has_rouge(aggregates: Mapping[str, Mapping[str, Any]]) -> bool:
    return any("rouge_l" in agg for agg in aggregates.values())


def markdown_table(aggregates: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per condition: n, F1 and EM (and ROUGE-L when a condition has it; ``—`` for the others) ×100, mean
    seconds to make an adapter (per distinct context) and to answer (per question or context), mean prompt tokens."""
    rouge = _has_rouge(aggregates)
    columns = [*COLUMNS[:4], *([ROUGE_COLUMN] if rouge else []), *COLUMNS[4:]]
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for name, agg in aggregates.items():
        rouge_cell = [f"{agg['rouge_l']:.1f}" if "rouge_l" in agg else "—"] if rouge else []
        cells = [f"`{name}`", str(agg["n"]), f"{agg['f1']:.1f}", f"{agg['em']:.1f}", *rouge_cell,
                 _seconds(agg["adapter_seconds"]), _seconds(agg["answer_seconds"]), f"{agg['prompt_tokens']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_markdown(results: Mapping[str, Any]) -> str:
    """The markdown report: what was run, the table, and what each condition means."""
    settings, meta = results["settings"], results["metadata"]
    facts = {k: v for k, v in meta.items() if k not in ("num_questions", "num_contexts") and v is not None}
    header = [
        "# SHINE evaluation",
        "",
        f"{meta['num_questions']} questions on {meta['num_contexts']} distinct contexts; base model "
        f"`{settings['base_model']}`; hypernetwork weights sha256 `{settings['hypernetwork_sha256'][:16]}`; greedy, "
        f"max {settings['max_new_tokens']} new tokens; seed {settings['seed']}; SFT {settings['sft']['steps']} steps "
        f"at lr {settings['sft']['learning_rate']:g}.",
        "",
    ]
    recall, notes = settings.get("recall"), []
    if recall and _has_rouge(results["aggregates"]):
        notes = [f"Recall: one task per distinct context (n = contexts), user turn `{recall['instruction']}` in the "
                 f"stage-1 format, greedy, up to the context's tokens + {recall['margin']} new tokens (at most "
                 f"{recall['max_new_tokens']}); F1, EM and ROUGE-L against the context.", ""]
    details = [f"- {key}: {value}" for key, value in facts.items()]
    legend = [f"- `{name}`: {text}" for name, text in results["conditions"].items()]
    return "\n".join([*header, *notes, *details, *([""] if details else []), markdown_table(results["aggregates"]),
                      *legend, ""])


def plot_results(results: Mapping[str, Any], title: str | None = None) -> bytes:
    """A PNG bar chart with F1 and EM (×100) side by side for every condition, and ROUGE-L for those that have it."""
    # matplotlib is heavy and only the chart needs it: loaded on first use
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    aggregates = results["aggregates"]
    names = list(aggregates)
    figure = Figure(figsize=(max(5.0, 1.3 * len(names) + 2), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    metrics = METRICS if _has_rouge(aggregates) else METRICS[:2]
    width = 0.76 / len(metrics)
    for index, (metric, label) in enumerate(metrics):
        offset = (index - (len(metrics) - 1) / 2) * width
        shown = [i for i, name in enumerate(names) if metric in aggregates[name]]
        bars = axes.bar([i + offset for i in shown], [aggregates[names[i]][metric] for i in shown], width, label=label)
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=15)
    axes.set_ylabel("score (×100)")
    peak = max(agg.get(metric, 0.0) for agg in aggregates.values() for metric, _ in metrics)
    axes.set_ylim(0, max(20.0, peak * 1.15))
    meta = results["metadata"]
    axes.set_title(title or f"SHINE evaluation: {meta['num_questions']} questions, {meta['num_contexts']} contexts")
    axes.legend()
    axes.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_reports(results: Mapping[str, Any], output_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``output_dir`` (each atomically)."""
    output_dir = Path(output_dir)
    return {
        "json": atomic_write_text(output_dir / RESULTS_JSON, json.dumps(results, indent=2) + "\n"),
        "markdown": atomic_write_text(output_dir / RESULTS_MARKDOWN, format_markdown(results)),
        "chart": atomic_write_bytes(output_dir / RESULTS_CHART, plot_results(results)),
    }
