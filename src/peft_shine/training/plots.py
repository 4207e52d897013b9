"""Loss curves of a training run as a PNG (matplotlib's Agg canvas; no display or pyplot state needed)."""

from __future__ import annotations

import argparse
import json
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


def chain_stages(histories: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[list[dict[str, Any]], list[int]]:
    """One log history from consecutive runs (each continuing the previous one's weights): steps of later runs
    are offset by the steps before them. Returns the history and the steps where each later run starts."""
    chained: list[dict[str, Any]] = []
    starts, offset = [], 0
    for index, history in enumerate(histories):
        if index:
            starts.append(offset)
        steps = [int(entry["step"]) for entry in history if "step" in entry]
        chained += [{**entry, "step": int(entry["step"]) + offset} for entry in history if "step" in entry]
        offset += max(steps, default=0)
    return chained, starts


def _split_at(points: Sequence[tuple[int, float]], starts: Sequence[int]) -> list[list[tuple[int, float]]]:
    """``points`` cut into the non-empty runs between consecutive stage starts (a start belongs to the stage
    before it: a stage's final evaluation is logged at its last step)."""
    bounds = [*sorted(starts), float("inf")]
    segments: list[list[tuple[int, float]]] = [[] for _ in bounds]
    for step, value in points:
        segments[next(i for i, bound in enumerate(bounds) if step <= bound)].append((step, value))
    return [segment for segment in segments if segment]


def plot_losses(log_history: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None,
                stage_starts: Sequence[int] = ()) -> Path:
    """Draw the training loss and the held-out losses (adapter and its controls) against the optimizer step,
    with a dashed line where each later stage starts (see `chain_stages`)."""
    from matplotlib.figure import Figure  # heavy, only for drawing: loaded on first use

    curves = loss_curves(log_history)
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    axes = figure.subplots()
    if "loss" in curves:
        steps, values = zip(*curves["loss"])
        axes.plot(steps, values, color="0.6", linewidth=1, label="training (batch)")
    for index, (key, label) in enumerate(EVAL_CURVES.items()):
        for number, segment in enumerate(_split_at(curves.get(key, []), stage_starts)):
            steps, values = zip(*segment)  # stages may hold out different data: their curves are not joined
            axes.plot(steps, values, marker="o", markersize=3, color=f"C{index}", label=None if number else label)
    for start in stage_starts:
        axes.axvline(start, color="0.3", linestyle="--", linewidth=1)
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


def eval_series(log_history: Sequence[Mapping[str, Any]], key: str, minus: str | None = None) -> list[tuple]:
    """``[(step, value)]`` of an evaluation key (``value = entry[key] - entry[minus]`` with ``minus``)."""
    return [(int(e["step"]), float(e[key]) - (float(e[minus]) if minus else 0.0)) for e in log_history
            if key in e and (minus is None or minus in e) and "step" in e]


def plot_comparison(histories: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                    title: str | None = None) -> Path:
    """Runs side by side (an ablation): the context-specific gap (wrong-context loss − adapter loss) and the KL to
    the in-context teacher of their held-out monitors, one line per run."""
    from matplotlib.figure import Figure  # heavy, only for drawing: loaded on first use

    figure = Figure(figsize=(10, 4), layout="constrained")
    gap_axes, kd_axes = figure.subplots(1, 2)
    for index, (name, history) in enumerate(histories.items()):
        for axes, points in ((gap_axes, eval_series(history, "eval_loss_wrong_context", "eval_loss")),
                             (kd_axes, eval_series(history, "eval_kd"))):
            if points:
                steps, values = zip(*points)
                axes.plot(steps, values, marker="o", markersize=3, color=f"C{index}", label=name)
    gap_axes.set_ylabel("wrong-context − adapter loss (nats)")
    gap_axes.set_title("context-specific gap (higher is better)")
    kd_axes.set_ylabel("KL to the in-context teacher (nats/token)")
    kd_axes.set_title("distance to the teacher (lower is better)")
    for axes in (gap_axes, kd_axes):
        axes.set_xlabel("optimizer step")
        axes.grid(alpha=0.3)
        axes.legend()
    if title:
        figure.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def last_history(run: Path) -> list[dict[str, Any]]:
    """The log history of a training output folder's last checkpoint."""
    states = sorted(run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        raise SystemExit(f"{run} has no checkpoint-*/trainer_state.json")
    return json.loads(states[-1].read_text(encoding="utf-8"))["log_history"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m peft_shine.training.plots RUN [RUN ...] --output PNG``: the losses of consecutive training runs, or with
    ``--compare`` the monitors of runs side by side (an ablation)."""
    parser = argparse.ArgumentParser(prog="python -m peft_shine.training.plots", description=main.__doc__)
    parser.add_argument("runs", nargs="+", help="training output folders (their last checkpoint's trainer_state)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--title", default=None)
    parser.add_argument("--compare", action="store_true", help="side by side instead of chained")
    parser.add_argument("--labels", default=None, help="--compare: comma-separated legend names (default: folders)")
    args = parser.parse_args(argv)
    histories = [last_history(run) for run in map(Path, args.runs)]
    if args.compare:
        labels = args.labels.split(",") if args.labels else [Path(run).name for run in args.runs]
        if len(labels) != len(args.runs):
            raise SystemExit(f"--labels names {len(labels)} runs, got {len(args.runs)} runs.")
        print(plot_comparison(dict(zip(labels, histories)), args.output, args.title))
        return 0
    history, starts = chain_stages(histories)
    print(plot_losses(history, args.output, args.title, starts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
