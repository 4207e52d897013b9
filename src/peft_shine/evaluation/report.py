"""The evaluation report: ``results.json``, a markdown table and a bar chart of F1 and EM per condition.

All three files are written atomically. The chart uses matplotlib's Agg canvas directly (no pyplot, no display,
no global backend switch).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io_utils import atomic_write_bytes, atomic_write_text


RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"
RESULTS_CHART = "results.png"

COLUMNS = ("condition", "n", "F1", "EM", "adapter s/context", "answer s/question", "prompt tokens")


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def markdown_table(aggregates: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per condition: n, F1 and EM (×100), mean seconds to make an adapter (per distinct context) and to
    answer (per question), mean prompt tokens."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "| --- |" + " ---: |" * (len(COLUMNS) - 1)]
    for name, agg in aggregates.items():
        cells = [f"`{name}`", str(agg["n"]), f"{agg['f1']:.1f}", f"{agg['em']:.1f}", _seconds(agg["adapter_seconds"]),
                 _seconds(agg["answer_seconds"]), f"{agg['prompt_tokens']:.0f}"]
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
    details = [f"- {key}: {value}" for key, value in facts.items()]
    legend = [f"- `{name}`: {text}" for name, text in results["conditions"].items()]
    return "\n".join([*header, *details, *([""] if details else []), markdown_table(results["aggregates"]),
                      *legend, ""])


def plot_results(results: Mapping[str, Any], title: str | None = None) -> bytes:
    """A PNG bar chart with F1 and EM (×100) side by side for every condition."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    aggregates = results["aggregates"]
    names = list(aggregates)
    figure = Figure(figsize=(max(5.0, 1.3 * len(names) + 2), 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    width = 0.38
    for offset, metric, label in ((-width / 2, "f1", "F1"), (width / 2, "em", "EM")):
        values = [aggregates[name][metric] for name in names]
        bars = axes.bar([i + offset for i in range(len(names))], values, width, label=label)
        axes.bar_label(bars, fmt="%.1f", fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=15)
    axes.set_ylabel("score (×100)")
    axes.set_ylim(0, max([20.0, *(a["f1"] * 1.15 for a in aggregates.values())]))
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
