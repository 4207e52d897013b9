"""A folder is ours only if it says so; stale weights never load (issue 27, items 1 and 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

from conftest import make_shine
from peft_shine import ShineModel
from peft_shine.adapters.export import write_adapter_folder
from peft_shine.cli import main
from peft_shine.errors import CheckpointError
from peft_shine.storage.save_targets import TargetExistsError
from tiny_models import make_char_tokenizer, make_tiny_lm


CONTEXT = "The ferry to Oskholm leaves at seven and returns at noon."


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hypernetwork_state(model: ShineModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("base_lm.")}


@pytest.fixture(scope="module")
def shine():
    model = make_shine("llama", lora_scale=0.05)
    model.generate_adapter(CONTEXT)
    return model


def test_save_adapter_onto_a_hypernetwork_folder_is_refused_and_overwrite_keeps_it(shine, tmp_path):
    folder = tmp_path / "hn"
    shine.save_pretrained(folder)
    before = _snapshot(folder)
    with pytest.raises(TargetExistsError, match="config.json"):
        shine.save_adapter(folder)
    assert _snapshot(folder) == before
    shine.save_adapter(folder, overwrite=True)  # only the adapter's files are added
    after = _snapshot(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}  # + card
    with pytest.raises(CheckpointError, match="adapter_config.json"):  # transformers would load it onto the model
        ShineModel.from_pretrained(folder, load_base_model=False)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).rename(tmp_path / name)
    reloaded = ShineModel.from_pretrained(folder, base_model=make_tiny_lm("llama"), tokenizer=make_char_tokenizer())
    assert all(torch.equal(value, _hypernetwork_state(shine)[key])
               for key, value in _hypernetwork_state(reloaded).items())


def test_save_adapter_onto_a_transformers_model_folder_is_refused(shine, tmp_path):
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    BertModel(config).save_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "README.md").write_text("# my bert\n")
    before = _snapshot(tmp_path / "bert")
    with pytest.raises(TargetExistsError):
        shine.save_adapter(tmp_path / "bert")
    assert _snapshot(tmp_path / "bert") == before


def test_an_adapter_folder_saved_by_peft_itself_is_not_taken_for_ours(shine, tmp_path):
    lora = get_peft_model(make_tiny_lm("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "peft")
    before = _snapshot(tmp_path / "peft")
    with pytest.raises(TargetExistsError):
        shine.save_adapter(tmp_path / "peft")
    assert _snapshot(tmp_path / "peft") == before


def test_an_edited_readme_survives_replacing_the_adapter_folder(shine, tmp_path):
    target = tmp_path / "adapter"
    shine.save_adapter(target)
    (target / "README.md").write_text("# my notes on this adapter\n")
    shine.save_adapter(target)  # a previous adapter save: replaced, the user's README kept
    assert (target / "README.md").read_text() == "# my notes on this adapter\n"
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "adapter_config.json",
                                                        "adapter_model.safetensors"]


def test_our_unchanged_card_is_replaced_an_edited_one_is_kept(shine, tmp_path):
    target = tmp_path / "adapter"
    write_adapter_folder(shine.peft_model, "default", target, {"README.md": "card one\n"})
    write_adapter_folder(shine.peft_model, "default", target, {"README.md": "card two\n"})
    assert (target / "README.md").read_text() == "card two\n"  # ours and unchanged: replaced
    write_adapter_folder(shine.peft_model, "default", target)
    assert not (target / "README.md").exists()  # ours and unchanged, and this save writes none: gone
    write_adapter_folder(shine.peft_model, "default", target, {"README.md": "card three\n"})
    (target / "README.md").write_text("card three, edited\n")
    write_adapter_folder(shine.peft_model, "default", target, {"README.md": "card four\n"})
    assert (target / "README.md").read_text() == "card three, edited\n"
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# project\n")
    (project / "main.py").write_text("print(1)\n")
    write_adapter_folder(shine.peft_model, "default", project, {"README.md": "card\n"}, overwrite=True)
    assert (project / "README.md").read_text() == "# project\n" and (project / "main.py").is_file()
    assert (project / "adapter_model.safetensors").is_file()


def test_cli_save_adapter_onto_the_hypernetwork_keeps_it(tmp_path, capsys):
    base = tmp_path / "base"
    make_tiny_lm("llama").save_pretrained(base)
    make_char_tokenizer().save_pretrained(base)
    ShineModel.from_base_model(str(base), lora_rank=2).save_pretrained(tmp_path / "hn")
    before = _snapshot(tmp_path / "hn")
    code = main(["chat", "--hypernetwork", str(tmp_path / "hn"), "--context", CONTEXT, "--question", "When?",
                 "--max-new-tokens", "2", "--save-adapter", str(tmp_path / "hn")])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert _snapshot(tmp_path / "hn") == before


def test_a_sharded_save_removes_the_stale_single_file_and_back(tmp_path):
    first, second = make_shine("llama", seed=0), make_shine("llama", seed=1)
    folder = tmp_path / "hn"
    first.save_pretrained(folder)
    (folder / "loss.png").write_bytes(b"png")
    second.save_pretrained(folder, max_shard_size="20KB")
    names = sorted(p.name for p in folder.iterdir())
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    loaded = ShineModel.from_pretrained(folder, load_base_model=False)
    assert all(torch.equal(value, _hypernetwork_state(second)[key])
               for key, value in _hypernetwork_state(loaded).items())
    first.save_pretrained(folder, max_shard_size="60KB")  # fewer shards: the old ones go
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert shards == sorted(set(index["weight_map"].values()))
    first.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "loss.png", "model.safetensors"]


def test_a_folder_with_both_a_single_file_and_an_index_is_refused(tmp_path):
    folder = tmp_path / "hn"
    make_shine("llama", seed=0).save_pretrained(folder, max_shard_size="20KB")
    stale = make_shine("llama", seed=1).state_dict()
    save_file({k: v.contiguous() for k, v in stale.items() if not k.startswith("base_lm.")},
              str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*model\.safetensors\.index\.json"):
        ShineModel.from_pretrained(folder, load_base_model=False)
    assert load_file(folder / "model.safetensors")  # nothing was deleted by the refusal
