"""Loss curves of a training run as a PNG (matplotlib's Agg canvas; no display or pyplot state needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


# log key -> legend label, in drawing order
EVAL_CURVES = {
    "eval_loss": "held-out, generated adapter",
    "eval_loss_wrong_context": "held-out, adapter of another context",
    "eval_loss_no_adapter": "held-out, no adapter",
}


def loss_curves(log_history: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """``{"loss": [(step, value), ...], "eval_loss": [...], ...}`` from a `TrainerState.log_history`."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key in ("loss", *EVAL_CURVES):
            if key in entry and "step" in entry:
                curves.setdefault(key, []).append((int(entry["step"]), float(entry[key])))
    return curves


def plot_losses(log_history: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Draw the training loss and the held-out losses (adapter and its controls) against the optimizer step."""
    from matplotlib.figure import Figure

    curves = loss_curves(log_history)
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    axes = figure.subplots()
    if "loss" in curves:
        steps, values = zip(*curves["loss"])
        axes.plot(steps, values, color="0.6", linewidth=1, label="training (batch)")
    for key, label in EVAL_CURVES.items():
        if key in curves:
            steps, values = zip(*curves[key])
            axes.plot(steps, values, marker="o", markersize=3, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy per answer token (nats)")
    axes.set_title(title or "SHINE training")
    axes.grid(alpha=0.3)
    if curves:
        axes.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
