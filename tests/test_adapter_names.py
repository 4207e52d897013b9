"""Adapter names peft would mishandle are refused; a saved adapter holds exactly its tensors (issue 19, item 2)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import LoraConfig, PeftModel, get_peft_model

from conftest import make_shine
from peft_shine import ContextError
from peft_shine.adapters.export import write_adapter_folder
from peft_shine.adapters.names import AdapterSaveError
from tiny_models import make_tiny_lm


CONTEXT = "The ferry to Kelmarsh leaves at seven and the harbour master is called Odile."
RESERVED = ["model", "layers", "self_attn", "q_proj", "base_model", "base_layer", "__base__", "lora_A", "lora_x",
            "my_lora_name", "0", "weight", "mlp", "embed_tokens"]


@pytest.fixture(scope="module")
def shine():
    return make_shine("llama", lora_scale=0.05)


@pytest.mark.parametrize("name", RESERVED)
def test_names_that_clash_with_module_paths_or_peft_are_refused(shine, name):
    with pytest.raises(ValueError, match=rf"Adapter name '{name}' (is reserved by peft|is part of the base model)"):
        shine.generate_adapter(CONTEXT, adapter_names=name)
    assert shine.peft_model is None or name not in shine.peft_model.peft_config


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"adapter_names": 5}, "adapter_names must be a string or a list of strings"),
    ({"adapter_names": ["a b"]}, "Invalid adapter name 'a b'"),
    ({"adapter_names": ["x", "x"]}, "got 1 adapter_names for 1|Got 2 adapter_names"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": 2.5}, "batch_size must be a positive integer"),
])
def test_bad_arguments_give_clear_errors(shine, kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        shine.generate_adapter(CONTEXT, **kwargs)


def test_names_that_contain_each_other_save_their_own_tensors(shine, tmp_path):
    shine.generate_adapter([CONTEXT, CONTEXT + " Twice."], adapter_names=["ctx1", "ctx10"])
    for name in ("ctx1", "ctx10"):
        shine.save_adapter(tmp_path / name, name)
        loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), tmp_path / name)
        for key, value in loaded.state_dict().items():
            if ".lora_" in key:
                ours = shine.peft_model.state_dict()[key.replace(".default.", f".{name}.")]
                assert torch.equal(value, ours)


@pytest.mark.parametrize(("first", "second"), [("layers", "model"), ("self_attn", "q_proj"), ("0", "weight")])
def test_a_peft_named_adapter_round_trips_or_is_refused_with_nothing_written(tmp_path, first, second):
    """Adapters named by plain peft (no peft-shine validation) after parts of the module paths: whatever the
    installed peft does with such names, `write_adapter_folder` either writes a folder that plain peft reloads to
    the adapter's own tensors and logits, or refuses with `AdapterSaveError` and leaves nothing behind."""
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(make_tiny_lm("llama"), config, adapter_name=first)
    peft_model.add_adapter(second, config)
    ids = torch.randint(5, 100, (1, 7))
    for name in (first, second):
        target = tmp_path / name
        try:
            write_adapter_folder(peft_model, name, target)
        except AdapterSaveError as error:
            assert "nothing was saved" in str(error)
            assert not target.exists() and not list(tmp_path.glob(f"*{name}*"))
            continue
        peft_model.set_adapter(name)
        with torch.no_grad():
            expected = peft_model(ids).logits
        loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), target).eval()
        ours = {re.sub(rf"\.(lora_[AB])\.{name}\.", r".\1.default.", key): value
                for key, value in peft_model.state_dict().items() if re.search(rf"\.lora_[AB]\.{name}\.", key)}
        theirs = {key: value for key, value in loaded.state_dict().items() if ".lora_" in key}
        assert ours.keys() == theirs.keys() and len(theirs) == 8
        assert all(torch.equal(theirs[key], ours[key]) for key in theirs)
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, expected)


_shared: dict = {}
NAME = st.one_of(st.text(alphabet="abqkv_proj-lyersmodl0123ABC_.: ", min_size=0, max_size=12),
                 st.sampled_from(RESERVED + ["default", "context_0", "ctx1", "ctx10"]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(NAME, min_size=1, max_size=3), text=st.text(min_size=0, max_size=40))
def test_every_saved_adapter_reloads_with_plain_peft_to_the_same_logits_or_is_refused(names, text):
    shine = _shared.setdefault("shine", make_shine("llama", lora_scale=0.05))
    contexts = [f"{text} #{i}" for i in range(len(names))]
    try:
        model = shine.generate_adapter(contexts, adapter_names=names)
    except (ValueError, TypeError) as error:  # ContextError is a ValueError
        assert isinstance(error, ContextError) or "adapter" in str(error).lower()
        return
    ids = torch.randint(5, 100, (1, 7))
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            with torch.no_grad():
                expected = model(ids, adapter_names=[name]).logits
            folder = shine.save_adapter(Path(tmp) / name, name)
            loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), folder).eval()
            with torch.no_grad():
                torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-4)
