"""Each ShineModel owns its adapters on a shared base; deleting many is linear (issue 27, items 3 and 5)."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from peft_shine import ShineModel
from peft_shine.adapters.store import tuner_layers
from peft_shine.errors import AdapterSaveError, AdapterStateError
from tiny_models import make_char_tokenizer, make_tiny_lm


def _pair(rank_second: int = 2):
    base, tokenizer = make_tiny_lm("llama"), make_char_tokenizer()
    first = ShineModel.from_base_model(base, tokenizer, lora_rank=2, seed=0, lora_scale=0.05)
    second = ShineModel.from_base_model(base, tokenizer, lora_rank=rank_second, seed=1, lora_scale=0.05)
    return first, second


def _state(shine: ShineModel, name: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in get_peft_model_state_dict(shine.peft_model, adapter_name=name,
                                                               save_embedding_layers=False).items()}


@pytest.mark.parametrize("rank_second", [2, 4])
def test_a_second_model_refuses_a_name_the_first_holds(tmp_path, rank_second):
    first, second = _pair(rank_second)
    first.generate_adapter("Context A: the gate code is 4417.")
    kept = _state(first, "default")
    with pytest.raises(AdapterStateError, match="'default'.*another ShineModel"):
        second.generate_adapter("Context B: the gate code is 9021.")
    assert all(torch.equal(value, _state(first, "default")[key]) for key, value in kept.items())
    second.generate_adapter("Context B: the gate code is 9021.", adapter_names="b")
    first.save_adapter(tmp_path / "out")
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert saved.keys() == kept.keys() and all(torch.equal(saved[key], value) for key, value in kept.items())


def test_save_delete_and_info_only_see_the_models_own_adapters(tmp_path):
    first, second = _pair()
    first.generate_adapter("Context A.", adapter_names="a")
    second.generate_adapter("Context B.", adapter_names="b")
    with pytest.raises(KeyError, match="'b'.*\\['a'\\]"):
        first.save_adapter(tmp_path / "out", "b")
    first.delete_adapters(["b"])  # not first's: left alone
    assert "b" in second.peft_model.peft_config and set(first.adapter_info) == {"a"}
    second.save_adapter(tmp_path / "b", "b")
    first.delete_adapters(["a"])
    assert "b" in second.peft_model.peft_config and second.peft_model is not None
    first.generate_adapter("Context A again.", adapter_names="a")  # the name is free again


def test_a_freed_name_can_be_taken_by_the_other_model():
    first, second = _pair()
    first.generate_adapter("Context A.", adapter_names="shared")
    first.delete_adapters("shared")
    second.generate_adapter("Context B.", adapter_names="shared")
    assert "shared" in second.adapter_info


def test_the_save_check_compares_values_not_counts(tmp_path):
    first, _ = _pair()
    first.generate_adapter("Context A.")
    with torch.no_grad():  # the adapter's weights were replaced behind the model's back (same count and shapes)
        layer = tuner_layers(first.base_lm)[0]
        layer.lora_A["default"].weight.mul_(2.0)
    with pytest.raises(AdapterSaveError, match="default.*changed"):
        first.save_adapter(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_linear_deletion_leaves_the_state_peft_would_leave():
    ours, _ = _pair()
    reference, _ = _pair()
    names = [f"n{index}" for index in range(6)]
    for shine in (ours, reference):
        shine.generate_adapter([f"Context {index}." for index in range(6)], adapter_names=names)
        shine.peft_model.set_adapter("n2")
    ours.delete_adapters(["n2", "n4", "n5"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("n2", "n4", "n5"):
            reference.peft_model.delete_adapter(name)
    assert list(ours.peft_model.peft_config) == list(reference.peft_model.peft_config)
    assert ours.peft_model.active_adapters == reference.peft_model.active_adapters
    for mine, theirs in zip(tuner_layers(ours.base_lm), tuner_layers(reference.base_lm)):
        assert set(mine.lora_A) == set(theirs.lora_A) and set(mine.scaling) == set(theirs.scaling)
        assert mine.active_adapters == theirs.active_adapters
