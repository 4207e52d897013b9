"""Damaged or diverged hypernetwork weights fail loudly, naming the tensor or the file (issue 27, item 4)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_shine
from peft_shine import CheckpointError, NonFiniteWeightsError, ShineModel
from peft_shine.training.trainer import ShineTrainer
from test_trainer import random_words, tiny_shine, training_args, word_dataset


@pytest.fixture
def folder(tmp_path):
    make_shine("llama").save_pretrained(tmp_path / "shine")
    return tmp_path / "shine"


def _rewrite(folder, change) -> None:
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_loading_logs_no_tensor_parallel_noise(folder):
    """As a user's script sees it (its own interpreter, transformers' default logging): transformers 5.25 reported
    every tensor of the plan-less hypernetwork as "not sharded" on each load."""
    code = f"from peft_shine import ShineModel; ShineModel.from_pretrained({str(folder)!r}, load_base_model=False)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not sharded" not in result.stderr and "TP rules" not in result.stderr


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(folder, value):
    def poison(tensors):
        tensors["m2p.layer_embedding"][0, 0] = value

    _rewrite(folder, poison)
    with pytest.raises(CheckpointError, match=r"m2p\.layer_embedding.*(nan|inf)"):
        ShineModel.from_pretrained(folder, load_base_model=False)


def test_a_tensor_of_the_wrong_shape_is_a_checkpoint_error_naming_it(folder):
    def reshape(tensors):
        tensors["memory_slots"] = torch.zeros(3, 5)

    _rewrite(folder, reshape)
    with pytest.raises(CheckpointError, match=r"memory_slots.*\[3, 5\]"):
        ShineModel.from_pretrained(folder, load_base_model=False)


@pytest.mark.parametrize("content", ["[1, 2, 3]", '"shine"', "null"])
def test_a_config_that_is_not_a_mapping_gets_a_clear_error(folder, content):
    (folder / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=r"config\.json.*JSON object"):
        ShineModel.from_pretrained(folder, load_base_model=False)


def test_save_pretrained_refuses_non_finite_weights_and_keeps_the_previous_checkpoint(folder):
    shine = make_shine("llama")
    before = (folder / "model.safetensors").read_bytes()
    with torch.no_grad():
        shine.meta_lora_A[0][0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"meta_lora_A\.0"):
        shine.save_pretrained(folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert json.loads((folder / "config.json").read_text())["model_type"] == "shine"


def test_init_from_a_checkpoint_with_non_finite_weights_is_refused(folder):
    from peft_shine.training.resume import load_hypernetwork_weights

    def poison(tensors):
        tensors["memory_slots"][1, 2] = float("inf")

    _rewrite(folder, poison)
    shine = make_shine("llama")
    with pytest.raises(CheckpointError, match=r"memory_slots.*inf"):
        load_hypernetwork_weights(shine, folder)
    assert torch.isfinite(shine.memory_slots).all()


class OverflowingSGD(torch.optim.SGD):
    """Plain SGD whose update overflows float32 (what a learning rate far too high does): finite gradients in,
    infinite weights out."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.add_(param.grad.sign(), alpha=3e38).add_(param.grad.sign(), alpha=3e38)


def test_a_step_that_makes_the_weights_non_finite_stops_training_with_a_clear_error(tmp_path):
    shine = tiny_shine()
    args = training_args(tmp_path, max_steps=3, logging_steps=1, save_strategy="steps", save_steps=1)
    optimizer = OverflowingSGD(shine.hypernetwork_parameters(), lr=1.0)
    trainer = ShineTrainer(shine, args, train_dataset=word_dataset(random_words(12)), optimizers=(optimizer, None))
    with pytest.raises(NonFiniteWeightsError, match=r"step 1 .*(memory_slots|meta_lora|m2p).*learning rate"):
        trainer.train()
    assert trainer.skipped_steps == 0  # the gradients were finite: the pre-step skip did not see it
    assert not list(tmp_path.glob("checkpoint-*/model.safetensors"))  # no diverged checkpoint was written
