"""ShineModel end to end on every supported family: generated adapters, peft export, training gradients."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import FAMILIES, chat_batch, make_shine
from peft_shine import ContextError
from tiny_models import make_tiny_lm


CONTEXTS = ["Alice moved to Lyon in 2019.", "Bob's cat is called Tom."]


def perturb_m2p(shine, seed: int = 0) -> None:
    """Give the untrained hypernetwork a clearly non-trivial output (so equality checks cannot pass by accident)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in shine.m2p.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("family", FAMILIES)
def test_peft_adapter_logits_equal_training_binding(family):
    shine = make_shine(family, lora_scale=0.05)
    perturb_m2p(shine)
    ids = torch.randint(5, 100, (2, 11))
    with torch.no_grad():
        lora = shine.generate_lora(*shine.tokenize_contexts(CONTEXTS))
        with shine.apply_lora(lora) as base:
            bound = base(ids).logits
        plain = shine.base_lm(ids).logits
    model = shine.generate_adapter(CONTEXTS, adapter_names=["a", "b"])
    assert isinstance(model, PeftModel) and model.get_base_model() is shine.base_lm
    with torch.no_grad():
        for row, name in enumerate(["a", "b"]):
            model.set_adapter(name)
            torch.testing.assert_close(model(ids[row:row + 1]).logits[0], bound[row], atol=1e-5, rtol=1e-4)
        mixed = model(ids, adapter_names=["b", "__base__"]).logits
    assert not torch.allclose(bound[0], plain[0], atol=1e-4)  # the adapter really changes the output
    torch.testing.assert_close(mixed[1], plain[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3"])
def test_saved_adapter_loads_with_plain_peft_on_a_fresh_base(family, tmp_path):
    shine = make_shine(family, lora_scale=0.05)
    perturb_m2p(shine)
    shine.base_lm.save_pretrained(tmp_path / "base")
    model = shine.generate_adapter(CONTEXTS[0])
    ids = torch.randint(5, 100, (1, 9))
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path / "peft")  # peft's own writer
    shine.save_adapter(tmp_path / "flat")  # ours: flat and atomic
    for folder in ("peft", "flat"):
        fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
        loaded = PeftModel.from_pretrained(fresh, tmp_path / folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-4)
        assert loaded.peft_config["default"].r == shine.config.lora_rank


def test_several_contexts_give_independent_named_adapters():
    shine = make_shine("llama", lora_scale=0.05)
    perturb_m2p(shine)
    shine.generate_adapter(CONTEXTS, adapter_names=["alice", "bob"])
    model = shine.generate_adapter("A third, unrelated context.", adapter_names="carol")
    assert set(model.peft_config) == {"alice", "bob", "carol"} and model.active_adapter == "carol"
    ids = torch.randint(5, 100, (3, 8))
    with torch.no_grad():
        mixed = model(ids, adapter_names=["alice", "bob", "carol"]).logits
        for row, name in enumerate(["alice", "bob", "carol"]):
            model.set_adapter(name)
            torch.testing.assert_close(mixed[row], model(ids[row:row + 1]).logits[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(mixed[0], mixed[1], atol=1e-4)


def test_generation_is_deterministic_and_batch_independent():
    shine = make_shine("llama", lora_scale=0.05)
    perturb_m2p(shine)
    from peft import get_peft_model_state_dict

    shine.generate_adapter(CONTEXTS, adapter_names=["a", "b"], batch_size=2)
    batched = get_peft_model_state_dict(shine.peft_model, adapter_name="b", save_embedding_layers=False)
    shine.generate_adapter(CONTEXTS[1], adapter_names="b")
    single = get_peft_model_state_dict(shine.peft_model, adapter_name="b", save_embedding_layers=False)
    for key, value in single.items():
        torch.testing.assert_close(batched[key], value, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradients_reach_every_hypernetwork_parameter_and_never_the_base(family, tokenizer):
    shine = make_shine(family).train()
    with torch.no_grad():
        for b in shine.meta_lora_B:
            b.normal_(std=0.01)  # at init B = 0, so A gets exactly zero gradient (as in any LoRA)
    ids, mask = shine.tokenize_contexts(CONTEXTS)
    conversation, labels = chat_batch(tokenizer, "Where?", "Lyon", rows=2)
    loss = shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation, labels=labels).loss
    loss.backward()
    for name, parameter in shine.named_parameters():
        if name.startswith("base_lm."):
            assert parameter.grad is None and not parameter.requires_grad, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_loss_counts_only_labelled_tokens(tokenizer):
    shine = make_shine("llama")
    ids, mask = shine.tokenize_contexts(CONTEXTS[0])
    conversation, labels = chat_batch(tokenizer, "Where?", "Lyon")
    output = shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation, labels=labels)
    assert output.num_label_tokens.item() == int((labels[:, 1:] != -100).sum())
    with torch.no_grad(), shine.apply_lora(shine.generate_lora(ids, mask)) as base:
        reference = base(input_ids=conversation, labels=labels).loss  # transformers' own shifted CE
    torch.testing.assert_close(output.loss, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradient_checkpointing_gives_the_same_gradients(family, tokenizer):
    grads = []
    for checkpointing in (False, True):
        shine = make_shine(family, lora_scale=0.05).train()
        perturb_m2p(shine)
        with torch.no_grad():
            for b in shine.meta_lora_B:
                b.normal_(std=0.05)  # a live meta-LoRA, so pass 1 recomputation matters too
        if checkpointing:
            shine.activation_checkpointing_enable()
            assert shine.is_gradient_checkpointing
        ids, mask = shine.tokenize_contexts(CONTEXTS)
        conversation, labels = chat_batch(tokenizer, "Who has a cat?", "Bob", rows=2)
        shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in shine.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4, msg=name)


def test_fitting_one_context_drives_reconstruction_loss_down(tokenizer):
    from peft_shine import ShineModel

    lm = make_tiny_lm("llama", initializer_range=0.2)  # default init gives logits too flat to ever fit
    shine = ShineModel.from_base_model(lm, tokenizer, lora_rank=2, lora_scale=0.03).train()
    context = "Alice moved to Lyon in 2019."
    ids, mask = shine.tokenize_contexts(context)
    conversation, labels = chat_batch(tokenizer, "Repeat the text.", context)
    optimizer = torch.optim.AdamW(shine.hypernetwork_parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] <= 0.1 * losses[0], losses[::10]


@pytest.mark.parametrize("bad, message", [
    ("", "empty or whitespace"),
    ("   \n\t", "empty or whitespace"),
    ([], "non-empty list"),
    ([b"bytes"], "bytes, not a str"),
    (["ok", 3], "int, not a str"),
])
def test_bad_contexts_raise_clear_errors(bad, message):
    with pytest.raises(ContextError, match=message):
        make_shine("llama").generate_adapter(bad)


def test_too_long_context_raises_unless_truncated():
    shine = make_shine("llama", max_context_length=16)
    with pytest.raises(ContextError, match="more than this hypernetwork's max_context_length .16.*truncation=True"):
        shine.generate_adapter("x" * 40)
    assert "default" in shine.generate_adapter("x" * 40, truncation=True).peft_config


@pytest.mark.parametrize("names, message", [
    (["a"], "exactly one name per context"),
    (["a", "a"], "unique"),
    (["a", "bad name"], "Invalid adapter name"),
])
def test_bad_adapter_names(names, message):
    with pytest.raises(ValueError, match=message):
        make_shine("llama").generate_adapter(CONTEXTS, adapter_names=names)


def test_generation_works_after_every_adapter_was_deleted():
    shine = make_shine("llama", lora_scale=0.05)
    model = shine.generate_adapter(CONTEXTS[0], adapter_names="first")
    model.delete_adapter("first")
    model = shine.generate_adapter(CONTEXTS[1], adapter_names="second")
    assert list(model.peft_config) == ["second"] and model.active_adapter == "second"
    with torch.no_grad():
        lora = shine.generate_lora(*shine.tokenize_contexts(CONTEXTS[1]))
        ids = torch.randint(5, 100, (1, 6))
        with shine.apply_lora(lora) as base:
            torch.testing.assert_close(model(ids).logits, base(ids).logits, atol=1e-5, rtol=1e-4)


def test_length_sorted_batches_give_the_adapters_of_the_callers_order():
    shine = make_shine("llama", lora_scale=0.05)
    perturb_m2p(shine)
    from peft import get_peft_model_state_dict

    contexts = ["a much longer context than all the others here", "short", "a medium context", "tiny", "mid one"]
    names = [f"n{i}" for i in range(len(contexts))]
    model = shine.generate_adapter(contexts, adapter_names=names, batch_size=2)  # batches by length, not by order
    assert model.active_adapter == names[-1]
    batched = {n: get_peft_model_state_dict(model, adapter_name=n, save_embedding_layers=False) for n in names}
    for context, name in zip(contexts, names):
        alone = shine.generate_adapter(context, adapter_names="alone")
        single = get_peft_model_state_dict(alone, adapter_name="alone", save_embedding_layers=False)
        for key, value in single.items():
            torch.testing.assert_close(batched[name][key.replace("alone", name)], value, atol=1e-5, rtol=1e-4)
