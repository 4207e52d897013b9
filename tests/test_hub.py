"""Pushing and pulling hypernetworks and generated adapters against the fake Hub, with the real clients."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from conftest import make_shine
from hub_server import WRITE_TOKEN, FakeHub
from peft_shine import AutoShineModel
from peft_shine.cli import main
from peft_shine.hub import (
    HubError,
    download,
    pull_adapter,
    pull_hypernetwork,
    push_adapter,
    push_adapter_folder,
    push_hypernetwork_folder,
)
from tiny_models import make_char_tokenizer, make_tiny_lm


pytest_plugins = ["hub_fixtures"]

REPO = "tester/shine-tiny"
CONTEXT = "Zorblax the cat lives on the moon base Kepler-9 and eats blue cheese on Tuesdays."
CARD_FIELDS = {
    "license": "mit",
    "datasets": ["wikitext"],
    "training": {"stages": [{"name": "pretrain", "datasets": ["wikitext"], "steps": 10}]},
    "eval_results": [{"condition": "adapter", "dataset": "squad", "f1": 12.5, "em": 3.0, "n": 8}],
}


def _weights(shine) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in shine.named_parameters() if not name.startswith("base_lm.")}


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _load(repo_id: str = REPO, **kwargs):
    return pull_hypernetwork(repo_id, base_model=make_tiny_lm("llama"), tokenizer=make_char_tokenizer(), **kwargs)


def _perturbed(shine):
    with torch.no_grad():
        shine.memory_slots.add_(1.0)
    return shine


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _card(hub: FakeHub, repo_id: str, revision: str = "main") -> ModelCard:
    return ModelCard(hub.file_bytes(repo_id, "README.md", revision).decode())


def test_push_pull_round_trip_card_and_fetched_files(hub_env: FakeHub) -> None:
    shine = make_shine("llama")
    info = shine.push_to_hub(REPO, commit_message="First upload", model_card_fields=CARD_FIELDS)
    assert info.oid == hub_env.get_repo(REPO).branches["main"]
    assert shine.hub_origin.repo_id == REPO and shine.hub_origin.commit == info.oid
    assert sorted(HfApi().list_repo_files(REPO)) == [".gitattributes", "README.md", "config.json", "model.safetensors"]
    assert HfApi().list_repo_commits(REPO)[0].title == "First upload"

    card = _card(hub_env, REPO)
    data = card.data.to_dict()
    assert data["library_name"] == "peft-shine" and data["base_model_relation"] == "adapter"
    assert data["base_model"] == shine.config.base_model_name_or_path and data["license"] == "mit"
    assert data["pipeline_tag"] == "text-generation" and "shine" in data["tags"] and data["datasets"] == ["wikitext"]
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == 12.5
    assert "transformers model" not in card.text  # not transformers' generic card

    hub_env.clear_log()
    loaded = _load()
    assert _same_weights(loaded, shine)
    assert loaded.hub_origin.repo_id == REPO and loaded.hub_origin.commit == info.oid
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub_env.requests_to("resolve") if r.method == "GET"}
    assert fetched == {"config.json", "model.safetensors"}
    assert not any(r.path.endswith(".bin") for r in hub_env.requests)


def test_token_never_printed_or_logged(hub_env: FakeHub, caplog: pytest.LogCaptureFixture,
                                       capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    caplog.set_level(logging.DEBUG)
    shine = make_shine("llama")
    shine.push_to_hub(REPO, token=WRITE_TOKEN)
    _load()
    refused = "hf_refused_secret_token_0123456789"
    with pytest.raises(HubError) as error:
        shine.push_to_hub(REPO, token=refused)
    assert main(["pull", REPO, "--output", str(tmp_path / "out")]) == 0
    out, err = capfd.readouterr()
    for secret in (WRITE_TOKEN, refused):
        assert secret not in caplog.text and secret not in out and secret not in err and secret not in str(error.value)


def test_base_model_named_in_config_and_offline_mode(hub_env: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tiny_lm("llama").push_to_hub("tester/tiny-llama")
    make_char_tokenizer().push_to_hub("tester/tiny-llama")
    shine = make_shine("llama", base_model_name_or_path="tester/tiny-llama")
    shine.push_to_hub(REPO)
    loaded = AutoShineModel.from_pretrained(REPO)  # no base given: the one in the config, from the Hub
    expected = make_tiny_lm("llama").state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in loaded.base_lm.state_dict().items())
    assert _same_weights(loaded, shine) and loaded.tokenizer is not None

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    hub_env.clear_log()
    offline = AutoShineModel.from_pretrained(REPO)  # warm cache: no request at all
    assert _same_weights(offline, shine) and hub_env.requests == []
    with pytest.raises(HubError, match="offline"):
        AutoShineModel.from_pretrained("tester/never-downloaded")


def test_branches_and_commit_shas(hub_env: FakeHub) -> None:
    v1 = make_shine("llama")
    main_commit = v1.push_to_hub(REPO).oid
    v2 = _perturbed(make_shine("llama"))
    dev_commit = v2.push_to_hub(REPO, revision="dev", commit_message="dev weights").oid
    assert {ref.name for ref in HfApi().list_repo_refs(REPO).branches} == {"main", "dev"}
    assert hub_env.get_repo(REPO).branches["main"] == main_commit

    assert _same_weights(_load(), v1)
    by_branch = _load(revision="dev")
    assert _same_weights(by_branch, v2) and by_branch.hub_origin.commit == dev_commit
    assert by_branch.hub_origin.revision == "dev"
    assert _same_weights(_load(revision=main_commit), v1)
    with pytest.raises(HubError, match="revision"):
        _load(revision="no-such-branch")


def test_private_repo_invisible_without_token(hub_env: FakeHub, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_shine("llama").push_to_hub(REPO, private=True)
    assert HfApi().model_info(REPO).private is True
    assert _load().hub_origin.repo_id == REPO  # visible with the token
    with pytest.raises(HubError, match="not found"):
        _load(token=False)
    monkeypatch.delenv("HF_TOKEN")
    assert main(["pull", REPO, "--output", str(tmp_path / "out")]) == 2
    assert "logged in" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_second_push_overwrites(hub_env: FakeHub) -> None:
    shine = make_shine("llama")
    shine.push_to_hub(REPO)
    HfApi().upload_file(path_or_fileobj=b"stale", path_in_repo="model-00001-of-00002.safetensors", repo_id=REPO)
    _perturbed(shine).push_to_hub(REPO)
    assert "model-00001-of-00002.safetensors" not in HfApi().list_repo_files(REPO)
    assert _same_weights(_load(), shine)


def test_failures_are_clear_and_keep_local_files(hub_env: FakeHub, tmp_path: Path) -> None:
    shine, folder = make_shine("llama"), tmp_path / "checkpoint"
    shine.save_pretrained(folder)
    shine.generate_adapter(CONTEXT)
    adapter = shine.save_adapter(tmp_path / "adapter")
    pushes = {folder: lambda **kw: push_hypernetwork_folder(folder, REPO, **kw),
              adapter: lambda **kw: push_adapter_folder(adapter, "tester/adapter", hypernetwork_repo=REPO,
                                                        model_card_fields={"base_model": "tester/base"}, **kw)}
    before = {path: _tree_bytes(path) for path in pushes}
    for push in pushes.values():
        with pytest.raises(HubError, match="refused the credentials.*hf auth login"):
            push(token="hf_not_a_valid_token")
        hub_env.fail_next("commit", "disconnect")
        with pytest.raises(HubError, match="nothing was committed.*retry"):
            push()
    for repo_id in (REPO, "tester/adapter"):
        assert [c.title for c in HfApi().list_repo_commits(repo_id)] == ["initial commit"]
    assert {path: _tree_bytes(path) for path in pushes} == before

    with pytest.raises(HubError, match="Check the repo id"):
        _load("tester/missing")
    with pytest.raises(HubError, match="Check the repo id"):
        download("tester/missing", folder, overwrite=True)
    assert _tree_bytes(folder) == before[folder]
    push_hypernetwork_folder(folder, REPO)  # the retry works
    assert hub_env.file_bytes(REPO, "model.safetensors") == before[folder]["model.safetensors"]


def test_adapter_push_loads_with_plain_peft(hub_env: FakeHub) -> None:
    shine = make_shine("llama")
    hypernetwork_commit = shine.push_to_hub(REPO).oid
    model = shine.generate_adapter(CONTEXT, "ctx")
    push_adapter(shine, "ctx", "tester/ctx-adapter")
    files = set(HfApi().list_repo_files("tester/ctx-adapter"))
    assert files == {".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors"}

    card = _card(hub_env, "tester/ctx-adapter")
    digest = hashlib.sha256(CONTEXT.encode()).hexdigest()
    assert digest in card.text and "Zorblax" not in card.text
    assert REPO in card.text and hypernetwork_commit in card.text
    assert card.data.library_name == "peft" and card.data.base_model == shine.config.base_model_name_or_path

    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    loaded = pull_adapter("tester/ctx-adapter", make_tiny_lm("llama")).eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        assert torch.equal(loaded(input_ids=ids).logits, expected)
        assert not torch.equal(make_tiny_lm("llama")(input_ids=ids).logits, expected)

    push_adapter(shine, "ctx", "tester/ctx-public", context=CONTEXT, include_context=True)
    assert "Zorblax" in _card(hub_env, "tester/ctx-public").text
    with pytest.raises(ValueError, match="does not match"):
        push_adapter(shine, "ctx", "tester/ctx-wrong", context="another text", include_context=True)


def test_cli_push_and_pull(hub_env: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shine = make_shine("llama")
    shine.save_pretrained(tmp_path / "hn")
    (tmp_path / "card.json").write_text(json.dumps(CARD_FIELDS))
    assert main(["push", "hypernetwork", str(tmp_path / "hn"), "tester/cli-hn", "--private", "--revision", "dev",
                 "--message", "From the CLI", "--card", str(tmp_path / "card.json")]) == 0
    api = HfApi()
    assert api.model_info("tester/cli-hn").private is True
    assert api.list_repo_commits("tester/cli-hn", revision="dev")[0].title == "From the CLI"
    assert _card(hub_env, "tester/cli-hn", "dev").data.license == "mit"

    assert main(["pull", "tester/cli-hn", "--revision", "dev", "--output", str(tmp_path / "pulled")]) == 0
    assert "Downloaded hypernetwork" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "pulled").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert _same_weights(AutoShineModel.from_pretrained(str(tmp_path / "pulled"), base_model=make_tiny_lm("llama"),
                                                        tokenizer=make_char_tokenizer()), shine)
    assert main(["pull", "tester/cli-hn", "--output", str(tmp_path / "pulled")]) == 2  # not empty, no --force

    shine.generate_adapter(CONTEXT)
    shine.save_adapter(tmp_path / "adapter")
    (tmp_path / "context.txt").write_text(CONTEXT)
    assert main(["push", "adapter", str(tmp_path / "adapter"), "tester/cli-adapter", "--hypernetwork-repo",
                 "tester/cli-hn", "--context-file", str(tmp_path / "context.txt"), "--base-model", "tester/base"]) == 0
    card = _card(hub_env, "tester/cli-adapter")
    assert hashlib.sha256(CONTEXT.encode()).hexdigest() in card.text and "Zorblax" not in card.text
    assert main(["pull", "tester/cli-adapter", "--output", str(tmp_path / "pulled"), "--force"]) == 0
    assert "Downloaded adapter" in capsys.readouterr().out
    assert (tmp_path / "pulled" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()
