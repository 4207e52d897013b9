"""The learned bias LoRA and the gate beside the generated LoRA: exact export as one standard LoRA, a zero start,
and warm starts from checkpoints saved without them (function unchanged; strict loading otherwise)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import make_shine
from peft_shine import CheckpointError, ShineModel
from peft_shine.training.resume import load_hypernetwork_weights
from test_chunking import DOCUMENT
from test_modeling import CONTEXTS, perturb_m2p


def _perturb_head(shine: ShineModel, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in shine.generated_head.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def _bound_logits(shine: ShineModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        lora = shine.generate_lora(*shine.tokenize_contexts(CONTEXTS[:1]))
        with shine.apply_lora(lora) as base:
            return base(ids).logits


def test_bias_lora_exports_exactly_as_one_standard_lora(tmp_path):
    shine = make_shine(lora_scale=0.05, bias_lora_rank=3, generated_gate_init=0.5)
    perturb_m2p(shine)
    _perturb_head(shine)
    ids = torch.randint(5, 100, (1, 9))
    bound = _bound_logits(shine, ids)
    with torch.no_grad():
        plain = shine.base_lm(ids).logits
    assert not torch.allclose(bound, plain, atol=1e-4)
    shine.base_lm.save_pretrained(tmp_path / "base")
    model = shine.generate_adapter(CONTEXTS[0])
    assert model.peft_config["default"].r == 2 + 3
    shine.save_adapter(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                         tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, bound, atol=1e-5, rtol=1e-4)


def test_a_zero_gate_and_a_fresh_bias_start_at_the_base_model():
    shine = make_shine(lora_scale=0.05, bias_lora_rank=2, generated_gate_init=0.0)
    perturb_m2p(shine)
    ids = torch.randint(5, 100, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(_bound_logits(shine, ids), shine.base_lm(ids).logits)
    shine.train()
    ids, mask = shine.tokenize_contexts(CONTEXTS[:1])
    conversation = torch.randint(5, 100, (1, 12))
    shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation, labels=conversation).loss.backward()
    assert shine.generated_head.gate.grad.abs().sum() > 0 and shine.generated_head.bias_B[0].grad.abs().sum() > 0


@pytest.mark.parametrize("gate", [None, 0.5])
def test_a_fresh_bias_lora_is_initialised_with_or_without_the_gate(gate, tmp_path):
    # without a gate the head has no parameter of its own, which transformers' init walk skips: A_b and B_b are
    # reached through their own containers, so they never keep uninitialised memory (a save would then refuse NaN)
    shine = make_shine(lora_scale=0.05, bias_lora_rank=2, generated_gate_init=gate)
    std = shine.config.meta_lora_init_scale ** 0.5
    for a, b in zip(shine.generated_head.bias_A, shine.generated_head.bias_B):
        assert torch.isfinite(a).all() and 0 < a.abs().max() < 8 * std and not b.any()
    old = make_shine(lora_scale=0.05)
    old.save_pretrained(tmp_path / "old")
    loaded = ShineModel.from_pretrained(tmp_path / "old", base_model=old.base_lm, tokenizer=old.tokenizer,
                                        bias_lora_rank=2)
    assert all(torch.isfinite(a).all() and 0 < a.abs().max() < 8 * std for a in loaded.generated_head.bias_A)


def test_an_old_checkpoint_warm_starts_with_the_new_tensors_and_the_same_function(tmp_path):
    old = make_shine(lora_scale=0.05)
    perturb_m2p(old)
    old.save_pretrained(tmp_path / "old")
    ids = torch.randint(5, 100, (1, 9))
    expected = _bound_logits(old, ids)
    loaded = ShineModel.from_pretrained(tmp_path / "old", base_model=old.base_lm, tokenizer=old.tokenizer,
                                        bias_lora_rank=2, generated_gate_init=0.0)
    assert loaded.generated_head.gate.tolist() == [1.0] * len(loaded.config.target_modules)
    torch.testing.assert_close(_bound_logits(loaded, ids), expected)
    fresh = make_shine(lora_scale=0.05, bias_lora_rank=2, generated_gate_init=0.0)  # training's init_from
    load_hypernetwork_weights(fresh, tmp_path / "old")
    torch.testing.assert_close(_bound_logits(fresh, ids), expected)


def test_a_checkpoint_saved_with_the_feature_still_loads_strictly(tmp_path):
    shine = make_shine(lora_scale=0.05, bias_lora_rank=2)
    _perturb_head(shine)
    shine.save_pretrained(tmp_path / "new")
    loaded = ShineModel.from_pretrained(tmp_path / "new", base_model=shine.base_lm, tokenizer=shine.tokenizer)
    torch.testing.assert_close(loaded.generated_head.bias_B[0], shine.generated_head.bias_B[0])
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["bias_lora_rank"] == 2
    from safetensors.torch import load_file, save_file
    weights = {k: v for k, v in load_file(tmp_path / "new" / "model.safetensors").items() if "bias_B" not in k}
    save_file(weights, tmp_path / "new" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing"):
        ShineModel.from_pretrained(tmp_path / "new", base_model=shine.base_lm, tokenizer=shine.tokenizer,
                                   bias_lora_rank=2)


def test_chunked_adapters_carry_the_bias_rank():
    # the pipeline works in the exported rank r + r_b: the chunk LoRAs concatenate at that rank, and the svd
    # budget may use all of it (checked against chunks × (r + r_b), not chunks × r)
    shine = make_shine(lora_scale=0.05, bias_lora_rank=1)
    _perturb_head(shine)
    exported = shine.config.exported_rank
    assert exported == shine.config.lora_rank + 1
    model = shine.generate_adapter(DOCUMENT, "doc", chunking={"chunk_tokens": 160, "combine": "cat"})
    chunks = len(shine.adapter_info["doc"]["chunk_tokens"])
    assert chunks >= 4 and model.peft_config["doc"].r == shine.adapter_info["doc"]["rank"] == chunks * exported
    model = shine.generate_adapter(DOCUMENT, "svd", chunking={"chunk_tokens": 160, "combine": "svd",
                                                              "rank": chunks * exported})
    assert model.peft_config["svd"].r == chunks * exported
