"""The adapter lifecycle on the shared base: delete, scope, the guard after merge_and_unload / unload, and the
renamed ``base_model`` keywords."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model_state_dict

from conftest import make_shine
from peft_shine import AdapterStateError, ShineModel
from tiny_models import make_char_tokenizer, make_tiny_lm


CONTEXTS = ["Mira keeps bees on the roof of the old mill.", "The Tarn bridge closes every winter at dusk."]


def _shine() -> ShineModel:
    shine = make_shine("llama", seed=0, lora_scale=0.05)
    with torch.no_grad():
        for b in shine.meta_lora_B:
            b.add_(0.05 * torch.randn_like(b))
        for parameter in shine.m2p.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return shine


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([[3, 4, 5, 6]])).logits


def test_delete_adapters_frees_names_and_the_last_one_unwraps_the_base() -> None:
    shine = _shine()
    plain = _logits(shine.base_lm)
    shine.generate_adapter(CONTEXTS, adapter_names=["a", "b"])
    shine.delete_adapters("a")
    assert list(shine.peft_model.peft_config) == ["b"] and "a" not in shine.adapter_info
    shine.delete_adapters(["b"])
    assert shine.peft_model is None and shine.adapter_info == {}
    assert not isinstance(shine.base_lm, PeftModel) and torch.equal(_logits(shine.base_lm), plain)
    again = shine.generate_adapter(CONTEXTS[0])  # wraps the plain base anew
    assert list(again.peft_config) == ["default"]


def test_adapter_scope_deletes_what_it_made_and_restores_the_active_adapter() -> None:
    shine = _shine()
    shine.generate_adapter(CONTEXTS[0], adapter_names="kept")
    with pytest.raises(KeyError), shine.adapter_scope() as scope:
        shine.generate_adapter(CONTEXTS[1], adapter_names="temporary")
        scope.append("temporary")
        raise KeyError("the block fails")
    assert list(shine.peft_model.peft_config) == ["kept"] and shine.peft_model.active_adapter == "kept"


def test_merge_and_unload_is_detected_before_the_next_adapter() -> None:
    shine = _shine()
    merged = shine.generate_adapter(CONTEXTS[0]).merge_and_unload()
    assert merged is shine.base_lm  # peft merged the adapter into the shared base's weights
    with pytest.raises(AdapterStateError, match="merge_and_unload"):
        shine.generate_adapter(CONTEXTS[1])


def test_unload_keeps_the_base_intact_and_generation_goes_on() -> None:
    shine = _shine()
    expected = shine.generate_adapter(CONTEXTS[1], adapter_names="reference")
    reference = _logits(expected)
    shine.delete_adapters("reference")
    shine.generate_adapter(CONTEXTS[0]).unload()
    assert not isinstance(shine.base_lm, PeftModel)
    again = shine.generate_adapter(CONTEXTS[1], adapter_names="reference")
    torch.testing.assert_close(_logits(again), reference)


def test_merge_adapter_without_unload_is_refused() -> None:
    shine = _shine()
    shine.generate_adapter(CONTEXTS[0]).merge_adapter()
    with pytest.raises(AdapterStateError):
        shine.generate_adapter(CONTEXTS[1])


def test_old_base_keywords_warn_and_still_work() -> None:
    shine = make_shine("llama", seed=0)
    config = shine.config
    with pytest.warns(FutureWarning, match="base_lm"):
        ShineModel(config).attach_base_model(base_lm=make_tiny_lm("llama"), tokenizer=make_char_tokenizer())
    with pytest.warns(FutureWarning, match="base="):
        ShineModel.from_base_model(base=make_tiny_lm("llama"), tokenizer=make_char_tokenizer())
    with pytest.raises(TypeError, match="both"):
        ShineModel.from_base_model(make_tiny_lm("llama"), base=make_tiny_lm("llama"))


def test_a_merge_unmerge_round_trip_is_not_mistaken_for_a_merge() -> None:
    shine = _shine()
    model = shine.generate_adapter(CONTEXTS[0])
    model.merge_adapter()
    model.unmerge_adapter()  # the weights are back up to float rounding
    shine.generate_adapter(CONTEXTS[1], adapter_names="next")
    assert "next" in shine.peft_model.peft_config


def test_merge_and_unload_is_caught_after_the_base_was_unwrapped_once() -> None:
    shine = _shine()
    shine.generate_adapter(CONTEXTS[0], adapter_names="first")
    shine.delete_adapters("first")  # the last adapter: the base is plain again
    merged = shine.generate_adapter(CONTEXTS[1]).merge_and_unload()  # a new PeftModel, merged into the base
    assert merged is shine.base_lm
    with pytest.raises(AdapterStateError, match="merge_and_unload"):
        shine.generate_adapter(CONTEXTS[0])


def test_a_failed_add_midway_removes_every_adapter_of_the_call_and_keeps_the_active_one() -> None:
    """Unchunked generation adds all or nothing, like chunked generation: one pipeline."""
    shine = _shine()
    shine.generate_adapter(CONTEXTS[0], "keep")
    before = {k: v.clone() for k, v in get_peft_model_state_dict(shine.peft_model, adapter_name="keep").items()}
    rank = shine.config.lora_rank
    # a foreign adapter on q_proj only under the second name: replacing it with a generated adapter fails
    shine.peft_model.add_adapter("second", LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj"]))
    shine.peft_model.set_adapter("keep")
    with pytest.raises(AdapterStateError, match="did not match"):
        shine.generate_adapter(CONTEXTS, ["first", "second"])
    assert list(shine.peft_model.peft_config) == ["keep"] and shine.peft_model.active_adapters == ["keep"]
    assert "first" not in shine.adapter_info and "second" not in shine.adapter_info
    after = get_peft_model_state_dict(shine.peft_model, adapter_name="keep")
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert shine.generate_adapter(CONTEXTS[1], "again").active_adapter == "again"  # and the model works on
