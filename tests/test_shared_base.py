"""Two hypernetworks on one base object, and the direct adapter path against peft's own (issue 19, items 3 and 5)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from conftest import make_shine
from peft_shine import ShineModel
from peft_shine.adapters.export import peft_state_dict
from tiny_models import make_char_tokenizer, make_tiny_lm


CONTEXTS = ["Mira keeps bees on the roof of the old mill.", "The Tarn bridge closes every winter at dusk.",
            "Our code word this week is marmalade."]


def _adapter_state(shine: ShineModel, name: str) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(shine.peft_model, adapter_name=name, save_embedding_layers=False)


def _perturbed(seed: int) -> ShineModel:
    shine = make_shine("llama", seed=seed, lora_scale=0.05)
    with torch.no_grad():
        for parameter in shine.m2p.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        for b in shine.meta_lora_B:
            b.add_(0.05 * torch.randn_like(b))
    return shine


def test_a_second_model_on_the_same_base_makes_the_adapters_of_a_fresh_base(tmp_path):
    first = _perturbed(0)
    first.generate_adapter(CONTEXTS[:2], adapter_names=["first-a", "first-b"])
    first_states = {name: _adapter_state(first, name) for name in ("first-a", "first-b")}
    _perturbed(1).save_pretrained(tmp_path / "second")

    fresh = ShineModel.from_pretrained(tmp_path / "second", base_model=make_tiny_lm("llama"),
                                       tokenizer=make_char_tokenizer())
    fresh.generate_adapter(CONTEXTS[2], adapter_names="second")
    second = ShineModel.from_pretrained(tmp_path / "second", base_model=first.base_lm, tokenizer=first.tokenizer)
    first.peft_model.set_adapter("first-a")  # the first model's adapter is active on the shared base
    second.generate_adapter(CONTEXTS[2], adapter_names="second")

    for key, value in _adapter_state(fresh, "second").items():
        torch.testing.assert_close(_adapter_state(second, "second")[key], value, atol=1e-6, rtol=1e-5)
    for name, state in first_states.items():  # the first model's adapters are untouched
        assert all(torch.equal(_adapter_state(first, name)[key], value) for key, value in state.items())
    assert second.peft_model is first.peft_model  # one adapter namespace per base object
    second.save_adapter(tmp_path / "saved", "second")
    first.save_adapter(tmp_path / "saved-first", "first-b")
    loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), tmp_path / "saved").eval()
    ids = torch.randint(5, 100, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, second.peft_model(ids, adapter_names=["second"]).logits,
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_adapters_added_directly_equal_those_added_through_peft(family):
    shine = make_shine(family, lora_scale=0.05)
    names = [f"ctx-{i}" for i in range(len(CONTEXTS))]
    model = shine.generate_adapter(CONTEXTS, adapter_names=names)
    ids, mask = shine.tokenize_contexts(CONTEXTS)
    with torch.no_grad():
        lora = shine.generate_lora(ids, mask)
    reference = get_peft_model(make_tiny_lm(family), shine.adapter_lora_config(), adapter_name=names[0])
    for row, name in enumerate(names):
        if row:
            reference.add_adapter(name, shine.adapter_lora_config())
        set_peft_model_state_dict(reference, peft_state_dict(shine.base_lm, shine.config.module_specs, lora, row),
                                  adapter_name=name)
    reference.set_adapter(names[-1])
    reference.eval()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, atol=1e-6, rtol=1e-5)
    batch = torch.randint(5, 100, (3, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(batch, adapter_names=names).logits,
                                   reference(batch, adapter_names=names).logits, atol=1e-5, rtol=1e-4)
    model.delete_adapter(names[0])  # peft's own operations keep working
    assert names[0] not in model.peft_config and shine.generate_adapter(CONTEXTS[0], adapter_names="again")


def test_generation_time_is_linear_in_the_number_of_contexts():
    import time

    def cpu_seconds(count: int) -> float:
        shine = make_shine("llama")
        contexts = [f"Note {i}: the harbour opens at dawn." for i in range(count)]
        started = time.process_time()
        shine.generate_adapter(contexts, batch_size=16)
        return time.process_time() - started

    cpu_seconds(8)  # warm-up
    small, large = cpu_seconds(20), cpu_seconds(160)
    assert large / 160 < 3 * small / 20, (small, large)  # quadratic growth would be 8x per context


def test_too_many_contexts_in_one_call_are_refused_before_any_work():
    from peft_shine.adapters.generation import MAX_CONTEXTS_PER_CALL

    shine = make_shine("llama")
    with pytest.raises(ValueError, match=rf"at most {MAX_CONTEXTS_PER_CALL} per call.*in chunks"):
        shine.generate_adapter(["x"] * (MAX_CONTEXTS_PER_CALL + 1))
    assert shine.peft_model is None
