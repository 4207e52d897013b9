"""Hypernetwork checkpoints: hypernetwork weights only, exact round trips, Auto classes, base mismatch errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from conftest import make_shine
from peft_shine import AutoShineModel, BaseModelMismatchError, CheckpointError, ShineConfig, ShineModel
from tiny_models import make_char_tokenizer, make_tiny_lm


@pytest.fixture
def saved_base(tmp_path):
    """A tiny base LM saved to a folder (so a checkpoint can name it and reload it)."""
    path = tmp_path / "base"
    make_tiny_lm("llama").save_pretrained(path)
    make_char_tokenizer().save_pretrained(path)
    return path


def hypernetwork_state(model: ShineModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("base_lm.")}


def test_checkpoint_holds_the_hypernetwork_only(tmp_path):
    shine = make_shine("llama")
    shine.save_pretrained(tmp_path / "shine")
    files = sorted(p.name for p in (tmp_path / "shine").iterdir())
    assert files == ["config.json", "model.safetensors"]
    with safe_open(tmp_path / "shine" / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    expected = hypernetwork_state(shine)
    assert keys == set(expected) and not any(key.startswith("base_lm") for key in keys)
    payload = sum(t.numel() * t.element_size() for t in expected.values())
    size = (tmp_path / "shine" / "model.safetensors").stat().st_size
    base_bytes = sum(p.numel() * 4 for p in shine.base_lm.parameters())
    assert payload <= size < payload + 64 * 1024 and size < payload + base_bytes / 2
    config = json.loads((tmp_path / "shine" / "config.json").read_text())
    assert config["model_type"] == "shine" and config["base_fingerprint"] == shine.config.base_fingerprint


def test_round_trip_restores_an_identical_hypernetwork(tmp_path):
    shine = make_shine("llama")
    with torch.no_grad():
        for parameter in shine.hypernetwork_parameters():
            parameter.add_(torch.randn_like(parameter))
    shine.save_pretrained(tmp_path / "shine")
    base = shine.base_lm
    loaded = ShineModel.from_pretrained(tmp_path / "shine", base_model=base, tokenizer=shine.tokenizer)
    assert loaded.base_lm is base
    for name, value in hypernetwork_state(shine).items():
        assert torch.equal(hypernetwork_state(loaded)[name], value), name
    ids, mask = shine.tokenize_contexts("Alice moved to Lyon.")
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(ids, mask), shine.encode(ids, mask), atol=0, rtol=0)


def test_auto_classes_load_checkpoint_with_the_base_named_in_the_config(tmp_path, saved_base):
    base = AutoModelForCausalLM.from_pretrained(saved_base)
    shine = ShineModel.from_base_model(base, make_char_tokenizer(), lora_rank=2)
    assert shine.config.base_model_name_or_path == str(saved_base)
    shine.save_pretrained(tmp_path / "shine")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "shine"), ShineConfig)
    for loader in (AutoModel.from_pretrained, AutoShineModel.from_pretrained):
        loaded = loader(str(tmp_path / "shine"))
        assert isinstance(loaded, ShineModel) and loaded.tokenizer is not None
        assert loaded.base_lm is not base  # loaded fresh from the folder named in the config
        assert "default" in loaded.generate_adapter("a context").peft_config


def test_auto_shine_model_on_a_plain_causal_lm_refuses_unless_asked_for_an_untrained_one(saved_base):
    with pytest.raises(CheckpointError, match="not a SHINE hypernetwork checkpoint.*from_base_model"):
        AutoShineModel.from_pretrained(str(saved_base), lora_rank=2)
    shine = AutoShineModel.from_pretrained(str(saved_base), lora_rank=2, allow_untrained=True)
    assert isinstance(shine, ShineModel) and shine.config.base_model_type == "llama"


def test_mismatched_base_raises_a_clear_error(tmp_path):
    shine = make_shine("llama")
    shine.save_pretrained(tmp_path / "shine")
    other = make_tiny_lm("llama", hidden_size=32, num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(BaseModelMismatchError, match="built for 'tiny-random-llama'.*hidden 64.*hidden 32"):
        ShineModel.from_pretrained(tmp_path / "shine", base_model=other)
    with pytest.raises(BaseModelMismatchError):
        make_shine("llama").attach_base_model(make_tiny_lm("qwen2"))


def test_peft_model_is_refused_as_a_base():
    shine = make_shine("llama")
    model = shine.generate_adapter("something")
    with pytest.raises(TypeError, match="get_base_model"):
        shine.attach_base_model(model)


def test_base_weights_are_frozen_and_untouched_by_a_training_step(tokenizer):
    from conftest import chat_batch

    shine = make_shine("llama").train()
    before = {n: p.clone() for n, p in shine.base_lm.named_parameters()}
    optimizer = torch.optim.AdamW(shine.hypernetwork_parameters(), lr=1e-2)
    ids, mask = shine.tokenize_contexts("Alice")
    conversation, labels = chat_batch(tokenizer, "Who?", "Alice")
    shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation, labels=labels).loss.backward()
    optimizer.step()
    assert all(torch.equal(p, before[n]) for n, p in shine.base_lm.named_parameters())
