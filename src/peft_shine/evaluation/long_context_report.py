"""Long-context results by length: a markdown table and a line plot of F1 against context length per condition.

    python -m peft_shine.evaluation.long_context_report RUN_DIR [RUN_DIR ...] [--plot FILE.png] [--markdown FILE.md]

Reads ``results.json`` (else the ``predictions.jsonl`` so far) of `shine eval` runs over long-context records (`evaluation.long_context`: ids ending in
``@<tokens>:<position or depth>``) and groups their predictions by (data set, length, condition). Records without
a length (HotpotQA) are grouped under their measured context length bucket instead (``~1K``, ``~2K``, ...).
"""

from __future__ import annotations

import argparse
import io
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_shine.evaluation.long_context import length_of
from peft_shine.storage.io_utils import atomic_write_bytes, atomic_write_text


Summary = dict[tuple[str, int], dict[str, dict[str, float]]]  # (data, length) -> condition -> {f1, em, n}


def summarize_by_length(results: Sequence[Mapping[str, Any]], lengths: Mapping[str, int] | None = None) -> Summary:
    """Mean F1 / EM ×100 and counts per (data set, length, condition). ``lengths`` maps a context sha256 to a
    token count, used for records whose id carries no length (rounded up to the next power of two ≥ 512)."""
    groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = defaultdict(list)
    for result in results:
        data = str(result["metadata"].get("data"))
        for row in result["predictions"]:
            length = length_of(row["id"])
            if length is None and lengths is not None and row["context_sha256"] in lengths:
                length = _bucket(lengths[row["context_sha256"]])
            groups[(data, length or 0, row["condition"])].append(row)
    summary: Summary = defaultdict(dict)
    for (data, length, condition), rows in sorted(groups.items(), key=lambda item: item[0][:2]):
        summary[(data, length)][condition] = {"f1": 100 * sum(r["f1"] for r in rows) / len(rows),
                                              "em": 100 * sum(r["em"] for r in rows) / len(rows), "n": len(rows)}
    return dict(summary)


def _bucket(tokens: int) -> int:
    bucket = 512
    while bucket < tokens:
        bucket *= 2
    return bucket


def markdown(summary: Summary, conditions: Sequence[str]) -> str:
    """One row per (data set, length): n and F1 of each condition (EM in brackets)."""
    lines = ["| data | tokens | n | " + " | ".join(f"`{c}` F1 (EM)" for c in conditions) + " |",
             "|---|---:|---:|" + "---:|" * len(conditions)]
    for (data, length), by_condition in summary.items():
        n = max(values["n"] for values in by_condition.values())
        cells = [f"{by_condition[c]['f1']:.1f} ({by_condition[c]['em']:.1f})" if c in by_condition else "—"
                 for c in conditions]
        lines.append(f"| {data} | {'≤' + str(length) if length else '?'} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: Summary, conditions: Sequence[str]) -> bytes:
    """PNG: one panel per data set, F1 against context length (log 2 axis), one line per condition."""
    # matplotlib is heavy and only the plot needs it: loaded on first use
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(data for data, _ in summary))
    figure = Figure(figsize=(4.2 * len(datasets), 3.4))
    FigureCanvasAgg(figure)
    for index, data in enumerate(datasets):
        axes = figure.add_subplot(1, len(datasets), index + 1)
        lengths = sorted(length for d, length in summary if d == data)
        for number, condition in enumerate(conditions):
            points = [(n, summary[(data, n)][condition]["f1"]) for n in lengths if condition in summary[(data, n)]]
            if points:  # one colour per condition in every panel
                axes.plot(*zip(*points), marker="o", label=condition, color=f"C{number}")
        axes.set_xscale("log", base=2)
        axes.set_xticks(lengths, [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
        axes.set_title(data)
        axes.set_xlabel("context tokens")
        axes.set_ylabel("F1")
        axes.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="shine eval output folders")
    parser.add_argument("--conditions", default="adapter,question_only,in_context,wrong_context")
    parser.add_argument("--plot", default=None, help="write the PNG here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    args = parser.parse_args(argv)
    results = [load_run(Path(run)) for run in args.runs]
    lengths = _context_lengths(results)
    conditions = args.conditions.split(",")
    summary = summarize_by_length(results, lengths)
    table = markdown(summary, conditions)
    print(table)
    if args.markdown:
        atomic_write_text(args.markdown, table)
    if args.plot:
        atomic_write_bytes(args.plot, plot(summary, conditions))
    return table


def load_run(folder: Path) -> dict[str, Any]:
    """A run's ``results.json``; for a run still going (or stopped), its ``predictions.jsonl`` so far, with the
    folder name as the data set (complete lines only; the scores are those stored with each row)."""
    if (folder / "results.json").is_file():
        return json.loads((folder / "results.json").read_text(encoding="utf-8"))
    rows = []
    for line in (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut short
    return {"metadata": {"data": f"{folder.name} (partial)"}, "predictions": rows}


def _context_lengths(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Context sha256 → tokens, from the in-context rows' prompt lengths (the context dominates the prompt)."""
    return {row["context_sha256"]: row["prompt_tokens"] for result in results for row in result["predictions"]
            if row["condition"] == "in_context"}


if __name__ == "__main__":
    main()
