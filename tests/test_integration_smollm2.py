"""The real embedded default base (SmolLM2-135M-Instruct): adapters generated, saved, reloaded and used."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from peft_shine import ShineModel
from peft_shine.prompting import BASE_ADAPTER, build_prompt, generate_answers
from peft_shine.qa_data import load_sample_context
from peft_shine.storage.base_models import DEFAULT_BASE_MODEL, load_base_model


pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shine():
    base, tokenizer = load_base_model()
    return ShineModel.from_base_model(base, tokenizer)


def test_config_records_the_portable_hub_id_and_layout(shine):
    config = shine.config
    assert config.base_model_name_or_path == DEFAULT_BASE_MODEL
    assert (config.hidden_size, config.num_base_layers, len(config.target_modules)) == (576, 30, 7)
    assert config.num_memory_slots * 576 >= 10_176 * config.lora_rank


def test_generated_adapter_answers_through_the_returned_peft_model(shine):
    context = load_sample_context()[0].context
    model = shine.generate_adapter(context)
    assert isinstance(model, PeftModel) and model.get_base_model() is shine.base_lm
    prompt = build_prompt(shine.tokenizer, "What is the capital of France?")
    with_adapter, without = generate_answers(model, shine.tokenizer, [prompt, prompt], ["default", BASE_ADAPTER], 12)
    assert "Paris" in with_adapter and "Paris" in without


def test_saved_adapter_reloads_on_a_fresh_base_with_identical_logits(shine, tmp_path):
    model = shine.generate_adapter("The Eiffel Tower was finished in 1889 for the World's Fair.")
    shine.save_adapter(tmp_path / "adapter")
    ids = shine.tokenizer(build_prompt(shine.tokenizer, "When was it finished?"), return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(ids).logits
        fresh, _ = load_base_model()
        loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
        torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert loaded.peft_config["default"].base_model_name_or_path == DEFAULT_BASE_MODEL


def test_quickstart_command_runs_end_to_end(tmp_path, capsys):
    from peft_shine.cli import main

    assert main(["quickstart", "--output", str(tmp_path / "qs"), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "Adapter generated in" in out and "question only" in out and "context in prompt" in out
    assert out.count("adapter of an unrelated context") == 5  # the control beside the adapter, for every question
    assert "adapter of an unrelated context" in out.splitlines()[-2]  # in the F1 line too
    assert "UNTRAINED" in out or "trained hypernetwork" in out
    assert {p.name for p in (tmp_path / "qs").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}


def test_chat_command_answers_questions_from_flags_and_stdin(tmp_path, capsys, monkeypatch):
    import io

    from peft_shine.cli import main

    context = tmp_path / "notes.txt"
    context.write_text("The Eiffel Tower was finished in 1889 for the World's Fair.", encoding="utf-8")
    args = ["chat", "--context-file", str(context), "--max-new-tokens", "6"]
    assert main([*args, "--question", "When was it finished?", "--compare", "--save-adapter", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "Adapter generated in" in out and out.count("adapter> ") == 1
    assert "base model, no context> " in out and "base model, context in prompt> " in out
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()
    monkeypatch.setattr("sys.stdin", io.StringIO("Who built it?\n\nWhat for?\nexit\nnever asked\n"))
    assert main(args) == 0
    assert capsys.readouterr().out.count("adapter> ") == 2
    assert main(["chat", "--context-file", str(tmp_path / "missing.txt")]) != 0
