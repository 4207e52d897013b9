"""Loss plots: chaining consecutive training runs and the command that draws them from checkpoints."""

from __future__ import annotations

import json

import pytest

from peft_shine.training.plots import chain_stages, loss_curves, main


STAGE_A = [{"loss": 3.0, "step": 10}, {"eval_loss": 2.9, "eval_loss_wrong_context": 3.1, "step": 20}]
STAGE_B = [{"loss": 2.5, "step": 5}, {"eval_loss": 2.4, "step": 15}, {"train_runtime": 9.0}]


def test_later_stages_continue_the_step_axis():
    history, starts = chain_stages([STAGE_A, STAGE_B])
    assert starts == [20]
    curves = loss_curves(history)
    assert curves["loss"] == [(10, 3.0), (25, 2.5)]
    assert curves["eval_loss"] == [(20, 2.9), (35, 2.4)]


def test_the_command_reads_the_last_checkpoint_of_each_run(tmp_path):
    for name, history in (("a", STAGE_A), ("b", STAGE_B)):
        for step in (5, 20):  # checkpoint-20 sorts after checkpoint-5 numerically, not as text
            folder = tmp_path / name / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            entries = history if step == 20 else history[:1]
            (folder / "trainer_state.json").write_text(json.dumps({"log_history": entries}))
    output = tmp_path / "plot.png"
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_held_out_curves_are_not_joined_across_stages():
    from peft_shine.training.plots import _split_at

    points = [(0, 3.0), (20, 2.0), (25, 4.0), (35, 3.5)]
    assert _split_at(points, [20]) == [[(0, 3.0), (20, 2.0)], [(25, 4.0), (35, 3.5)]]
    assert _split_at(points, []) == [points]


def test_comparison_plots_the_context_gap_and_teacher_kl_of_each_run(tmp_path):
    from peft_shine.training.plots import eval_series

    history = [{"eval_loss": 2.0, "eval_loss_wrong_context": 2.5, "eval_kd": 0.9, "step": 0},
               {"eval_loss": 1.5, "eval_loss_wrong_context": 2.25, "step": 10}, {"loss": 1.0, "step": 10}]
    assert eval_series(history, "eval_loss_wrong_context", "eval_loss") == [(0, 0.5), (10, 0.75)]
    assert eval_series(history, "eval_kd") == [(0, 0.9)]
    for name in ("ce", "kd"):
        folder = tmp_path / name / "checkpoint-10"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    output = tmp_path / "compare.png"
    assert main([str(tmp_path / "ce"), str(tmp_path / "kd"), "--compare", "--output", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "ce"), str(tmp_path / "kd"), "--compare", "--output", str(output),
                 "--labels", "ce lr 1e-4,kd lr 1e-4"]) == 0
    with pytest.raises(SystemExit, match="names 1 runs"):
        main([str(tmp_path / "ce"), str(tmp_path / "kd"), "--compare", "--output", str(output), "--labels", "ce"])
