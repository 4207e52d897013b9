"""Speed changes of adapter generation change no result (issue 18): the fast paths leave the `PeftModel` exactly as
peft's own calls would (weights, active adapters, ``requires_grad`` and train/eval flags), and batching, length
sorting and sub-batching give the adapters of one-at-a-time generation."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from conftest import make_shine
from peft_shine.adapters.contexts import plan_batches
from peft_shine.adapters.export import peft_state_dict
from tiny_models import make_tiny_lm


CONTEXTS = ["Mira keeps bees on the roof of the old mill.", "The bridge closes at dusk.",
            "Our code word this week is marmalade, and it changes every Monday at noon.", "Tea at four."]
STEPS = [(CONTEXTS[:2], ["one", "two"]), ([CONTEXTS[2]], ["one"]), ([CONTEXTS[3]], ["three"]), ([CONTEXTS[0]], ["three"])]


def _states(shine, contexts: list[str]) -> list[dict[str, torch.Tensor]]:
    """The peft state dicts of ``contexts``, each generated alone (no batching, no sorting)."""
    states = []
    for text in contexts:
        with torch.no_grad():
            lora = shine.generate_lora(*shine.tokenize_contexts(text))
        states.append(peft_state_dict(shine.base_lm, shine.config.module_specs, lora, 0))
    return states


def _peft_reference(shine, family: str):
    """The same sequence of adapters through peft's own calls: get_peft_model / add_adapter, its state-dict loader,
    set_adapter and eval() after every step (what `add_adapters` did before its fast paths)."""
    reference = None
    for contexts, names in STEPS:
        for name, state in zip(names, _states(shine, contexts)):
            if reference is None:
                reference = get_peft_model(make_tiny_lm(family), shine.adapter_lora_config(), adapter_name=name)
            elif name not in reference.peft_config:
                reference.add_adapter(name, shine.adapter_lora_config())
            set_peft_model_state_dict(reference, state, adapter_name=name)
        reference.set_adapter(names[-1])
        reference.eval()
    return reference


def _flags(model) -> tuple[dict, dict, dict]:
    modes = {name: module.training for name, module in model.named_modules()}
    grads = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    active = {name: list(module.active_adapters) for name, module in model.named_modules()
              if hasattr(module, "lora_A")}
    return modes, grads, active


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_fast_export_leaves_the_peft_model_as_peft_would(family):
    shine = make_shine(family, lora_scale=0.05)
    for contexts, names in STEPS:
        model = shine.generate_adapter(contexts, adapter_names=names)
    reference = _peft_reference(shine, family)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, atol=1e-6, rtol=1e-5)
    assert _flags(model) == _flags(reference)
    assert model.active_adapter == reference.active_adapter == "three"
    batch = torch.randint(5, 100, (3, 7))
    with torch.no_grad():
        torch.testing.assert_close(model(batch, adapter_names=["one", "two", "three"]).logits,
                                   reference(batch, adapter_names=["one", "two", "three"]).logits, atol=1e-5, rtol=1e-4)


def test_generating_in_training_mode_restores_each_module_mode_and_changes_no_weight():
    shine = make_shine("llama", lora_scale=0.05)
    shine.generate_adapter(CONTEXTS[0], adapter_names="first")
    expected = get_peft_model_state_dict(shine.peft_model, adapter_name="first")
    shine.train()
    shine.m2p.blocks[0].eval()  # a module left in its own mode is given back in it
    before = {name: module.training for name, module in shine.named_modules() if "lora_" not in name}
    shine.generate_adapter(CONTEXTS[0], adapter_names="again")
    after = {name: module.training for name, module in shine.named_modules() if "lora_" not in name}
    changed = {name for name in before if before[name] != after[name]}
    assert all(name.startswith(("base_lm", "peft_model")) for name in changed)  # the PeftModel goes to eval, as before
    assert not any(module.training for module in shine.peft_model.modules())
    assert shine.m2p.training and not shine.m2p.blocks[0].training
    for key, value in get_peft_model_state_dict(shine.peft_model, adapter_name="again").items():
        torch.testing.assert_close(value, expected[key])


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_batched_sorted_generation_equals_one_context_at_a_time(batch_size):
    shine = make_shine("llama", lora_scale=0.05)
    names = [f"ctx-{i}" for i in range(len(CONTEXTS))]
    model = shine.generate_adapter(CONTEXTS, adapter_names=names, batch_size=batch_size)
    for name, state in zip(names, _states(shine, CONTEXTS)):
        ours = get_peft_model_state_dict(model, adapter_name=name)
        for key, value in state.items():
            torch.testing.assert_close(ours[key], value, atol=1e-5, rtol=1e-4)


def test_batches_are_sorted_capped_and_cover_every_context_once():
    lengths = [300, 12, 500, 64, 70, 66, 4000, 65, 512, 90]
    batches = plan_batches(lengths, batch_size=3, slots=53, max_tokens=1024, max_padding=0.1)
    assert sorted(index for batch in batches for index in batch) == list(range(len(lengths)))
    flat = [lengths[index] for batch in batches for index in batch]
    assert flat == sorted(lengths)
    for batch in batches:
        width = max(lengths[index] for index in batch) + 53
        real = sum(lengths[index] + 53 for index in batch)
        assert len(batch) <= 3
        assert len(batch) == 1 or (len(batch) * width <= 1024 and len(batch) * width - real <= 0.1 * len(batch) * width)
    assert [4000] in [[lengths[index] for index in batch] for batch in batches]  # too long for the budget: alone
    assert any(len(batch) == 3 for batch in batches)  # similar lengths do share a pass
