"""Hostile configs and checkpoints fail fast and clearly; loading is strict (issue 19, item 4)."""

from __future__ import annotations

import io
import json
import time

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file, save_file

from conftest import make_shine
from peft_shine import AutoShineModel, CheckpointError, ShineConfig, ShineModel
from tiny_models import make_char_tokenizer, make_tiny_lm


pytest_plugins = ["hub_fixtures"]


@pytest.fixture
def saved(tmp_path):
    shine = make_shine("llama")
    shine.save_pretrained(tmp_path / "shine")
    return shine, tmp_path / "shine"


def _edit_config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(("changes", "message"), [
    ({"m2p_num_layers": 10**6}, r"m2p_num_layers=1000000 is out of bounds: allowed 1 to 64"),
    ({"lora_scale": float("nan")}, r"lora_scale=nan must be finite and positive"),
    ({"lora_scale": float("inf")}, r"lora_scale=inf must be finite and positive"),
    ({"lora_scale": -1.0}, r"lora_scale=-1.0 must be finite and positive"),
    ({"meta_lora_init_scale": 0}, r"meta_lora_init_scale=0 must be finite and positive"),
    ({"lora_rank": -3}, r"lora_rank=-3 is out of bounds"),
    ({"hidden_size": 64.5}, r"hidden_size must be an integer"),
    ({"num_memory_slots": 10**9}, r"num_memory_slots=1000000000 is out of bounds"),
    ({"max_context_length": 0}, r"max_context_length=0 is out of bounds"),
    ({"module_shapes": [[64, -1]] * 7}, r"module_shapes entry \[64, -1\] must be"),
    ({"m2p_ffn_dim": 1_000_000, "m2p_num_layers": 64}, r"hypernetwork of [\d,]+ parameters, more than"),
])
def test_out_of_bounds_configs_fail_before_any_allocation(saved, changes, message):
    shine, folder = saved
    _edit_config(folder, **changes)
    started = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        ShineModel.from_pretrained(folder, base_model=shine.base_lm, tokenizer=shine.tokenizer)
    assert time.perf_counter() - started < 10
    with pytest.raises(ValueError, match=message):
        ShineConfig(**{**shine.config.to_dict(), **changes})


def test_more_layers_in_the_config_than_in_the_weights_is_refused(saved):
    shine, folder = saved
    _edit_config(folder, m2p_num_layers=4)
    with pytest.raises(CheckpointError, match=r"missing \['m2p.blocks.2.*stay random"):
        ShineModel.from_pretrained(folder, base_model=shine.base_lm, tokenizer=shine.tokenizer)


@pytest.mark.parametrize("drop", ["memory_slots", "m2p.blocks.1.linear1.weight"])
def test_missing_hypernetwork_tensors_are_refused(saved, drop):
    shine, folder = saved
    tensors = load_file(folder / "model.safetensors")
    del tensors[drop]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"missing \['{drop}'\]"):
        ShineModel.from_pretrained(folder, base_model=shine.base_lm, tokenizer=shine.tokenizer)


def test_unexpected_tensors_are_refused(saved):
    shine, folder = saved
    tensors = load_file(folder / "model.safetensors")
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected \['extra.weight'\]"):
        ShineModel.from_pretrained(folder, base_model=shine.base_lm, tokenizer=shine.tokenizer)


def test_a_pickle_only_hub_repo_is_refused_without_asking_for_a_conversion(hub_env, saved):
    shine, folder = saved
    api = HfApi()
    api.create_repo("tester/pickled")
    buffer = io.BytesIO()
    torch.save({k: v for k, v in shine.state_dict().items() if not k.startswith("base_lm.")}, buffer)
    api.upload_file(path_or_fileobj=buffer.getvalue(), path_in_repo="pytorch_model.bin", repo_id="tester/pickled")
    api.upload_file(path_or_fileobj=folder / "config.json", path_in_repo="config.json", repo_id="tester/pickled")
    hub_env.requests.clear()
    with pytest.raises(CheckpointError, match="this repository holds only pickle weights .pytorch_model.bin."):
        AutoShineModel.from_pretrained("tester/pickled", base_model=make_tiny_lm("llama"),
                                       tokenizer=make_char_tokenizer())
    assert all(request.method in ("GET", "HEAD") for request in hub_env.requests)  # no PR, no conversion request
