"""Training faults: a training process killed with SIGKILL resumes from its last checkpoint and finishes;
the data pipeline never crashes on arbitrary text (hypothesis)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_shine.training.collate import ShineDataCollator
from peft_shine.training.data import (
    build_pretraining_examples,
    build_qa_examples,
    tokenize_examples,
)
from tiny_models import make_char_tokenizer, write_training_folder


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    config = {"max_context_length": 48, "max_conversation_length": 160, "per_device_train_batch_size": 2,
              "gradient_accumulation_steps": 1, "logging_steps": 1, "save_steps": 2, "save_total_limit": 10,
              "eval_strategy": "no", "use_cpu": True, "disable_tqdm": True, "model": {"lora_rank": 2}}
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "theta", "kappa"]
    texts = [" ".join(words[(i + j) % 8] for j in range(6)) for i in range(64)]
    return write_training_folder(tmp_path_factory.mktemp("killed-run"), config, texts)


def train_command(folder, output, *extra: str) -> list[str]:
    return [sys.executable, "-m", "peft_shine.cli", "train", "--stage", "pretrain", "--data",
            str(folder / "texts.jsonl"), "--base", str(folder / "base"), "--config", str(folder / "config.json"),
            "--eval-fraction", "0", "--output", str(output), "--max-steps", "40", *extra]


def checkpoints(output) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*") if (p / "trainer_state.json").exists())


@pytest.mark.integration
def test_training_killed_with_sigkill_resumes_from_its_last_checkpoint(run_folder, tmp_path):
    output = tmp_path / "run"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(train_command(run_folder, output), env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not checkpoints(output) or checkpoints(output)[-1] < 6):
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = checkpoints(output)
    assert killed_at and killed_at[-1] < 40, "the run was not interrupted mid-way"
    finished = subprocess.run(train_command(run_folder, output, "--resume"), env=environment, capture_output=True,
                              text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    state = json.loads((output / "checkpoint-40" / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    logged_steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged_steps[-1] == 40 and killed_at[-1] in logged_steps  # history continues the killed run's
    assert (output / "model.safetensors").exists() and (output / "config.json").exists()


def test_a_resumed_run_does_not_evaluate_its_checkpoint_step_again(run_folder, tmp_path):
    from peft_shine.cli import main

    config = {**json.loads((run_folder / "config.json").read_text()), "eval_strategy": "steps", "eval_steps": 2,
              "eval_on_start": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    common = ["train", "--stage", "pretrain", "--data", str(run_folder / "texts.jsonl"), "--base",
              str(run_folder / "base"), "--config", str(tmp_path / "config.json"), "--eval-fraction", "0.1",
              "--output", str(tmp_path / "run")]
    assert main([*common, "--max-steps", "2"]) == 0
    assert main([*common, "--max-steps", "4", "--resume"]) == 0
    history = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [0, 2, 4]


_tokenizer = make_char_tokenizer()
DOCUMENTED = ("empty", "No examples", "dropped", "max_conversation_length", "max_context_length", "field")
text_strategy = st.one_of(st.text(max_size=80), st.text(alphabet=st.characters(categories=["Cc", "Zs", "Lo"]),
                                                        max_size=30), st.text(alphabet="ab ", min_size=200, max_size=600))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(text_strategy, min_size=1, max_size=5), seed=st.integers(0, 10))
def test_pretraining_pipeline_never_crashes_on_arbitrary_text(texts, seed):
    try:
        examples = build_pretraining_examples(texts, _tokenizer, 48, 160, seed=seed)
        dataset = tokenize_examples(examples, _tokenizer, 48, 160)
    except ValueError as error:  # the documented failure: a message naming the problem
        assert any(word in str(error) for word in DOCUMENTED), str(error)
        return
    batch = ShineDataCollator(_tokenizer.pad_token_id)([dataset[i] for i in range(min(3, len(dataset)))])
    assert batch["input_ids"].shape == batch["labels"].shape
    assert batch["context_input_ids"].shape[1] <= 48 and batch["input_ids"].shape[1] <= 160


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contexts=st.lists(text_strategy, min_size=1, max_size=3), question=text_strategy, answer=text_strategy)
def test_qa_pipeline_never_crashes_on_arbitrary_records(contexts, question, answer):
    records = [{"id": str(i), "source": "fuzz", "title": f"t{i}", "context": c, "question": question,
                "answers": [answer]} for i, c in enumerate(contexts)]
    try:
        examples = build_qa_examples(records, _tokenizer, 48, mode="mixed")
        dataset = tokenize_examples(examples, _tokenizer, 48, 160)
    except ValueError as error:
        assert any(word in str(error) for word in DOCUMENTED), str(error)
        return
    for row in dataset:
        assert len(row["context_input_ids"]) <= 48 and len(row["input_ids"]) <= 160


def test_resume_skips_a_checkpoint_left_incomplete_by_a_crash(tmp_path):
    from peft_shine.training.resume import CHECKPOINT_FILES, last_complete_checkpoint

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        for name in CHECKPOINT_FILES:
            (tmp_path / f"checkpoint-{step}" / name).write_text("{}")
    (tmp_path / "checkpoint-6").mkdir()  # killed mid-write: weights there, no trainer state yet
    (tmp_path / "checkpoint-6" / "model.safetensors").write_text("")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    with pytest.raises(FileNotFoundError, match="No complete checkpoint to resume from"):
        last_complete_checkpoint(tmp_path / "nowhere")
