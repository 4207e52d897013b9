"""``shine pull`` fetches only what a checkpoint needs, within a size limit, verified (issue 19, items 5 and 6)."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import HfApi

from conftest import make_shine
from peft_shine.cli import main
from peft_shine.errors import PullError
from peft_shine.hub import download


pytest_plugins = ["hub_fixtures"]


@pytest.fixture
def repo(hub_env, tmp_path):
    make_shine("llama").save_pretrained(tmp_path / "hn")
    api = HfApi()
    api.create_repo("tester/hn")
    for name in ("config.json", "model.safetensors"):
        api.upload_file(path_or_fileobj=tmp_path / "hn" / name, path_in_repo=name, repo_id="tester/hn")
    return api, tmp_path


def _pull_error(capsys, *args: str) -> str:
    assert main(["pull", *args]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("shine pull")]  # besides download progress bars
    assert len(lines) == 1 and lines[0].startswith("shine pull: error:") and "Traceback" not in err
    return lines[0]


def test_only_the_checkpoint_files_are_downloaded(repo):
    api, tmp_path = repo
    for name in ("notes.json", "huge.safetensors", "docs/guide.md"):
        api.upload_file(path_or_fileobj=b"{}", path_in_repo=name, repo_id="tester/hn")
    path, kind, _ = download("tester/hn", tmp_path / "out")
    assert kind == "hypernetwork"
    assert sorted(p.name for p in path.rglob("*")) == ["config.json", "model.safetensors"]


def test_a_repo_over_the_size_limit_is_refused_before_downloading(repo):
    _, tmp_path = repo
    with pytest.raises(PullError, match="more than the .* limit; nothing was downloaded"):
        download("tester/hn", tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()


def test_incomplete_or_malformed_repos_fail_in_one_line_and_write_nothing(repo, capsys):
    api, tmp_path = repo
    api.delete_file("model.safetensors", repo_id="tester/hn")
    assert "lacks model.safetensors" in _pull_error(capsys, "tester/hn", "--output", str(tmp_path / "a"))
    api.upload_file(path_or_fileobj=b"not json", path_in_repo="config.json", repo_id="tester/hn")
    assert "config.json is not valid JSON" in _pull_error(capsys, "tester/hn", "--output", str(tmp_path / "a"))
    config = json.loads((tmp_path / "hn" / "config.json").read_text())
    api.upload_file(path_or_fileobj=json.dumps({**config, "lora_scale": -1}).encode(), path_in_repo="config.json",
                    repo_id="tester/hn")
    api.upload_file(path_or_fileobj=b"\x00" * 10, path_in_repo="model.safetensors", repo_id="tester/hn")
    assert "not a readable safetensors file" in _pull_error(capsys, "tester/hn", "--output", str(tmp_path / "a"))
    api.upload_file(path_or_fileobj=tmp_path / "hn" / "model.safetensors", path_in_repo="model.safetensors",
                    repo_id="tester/hn")
    assert "not a valid SHINE config" in _pull_error(capsys, "tester/hn", "--output", str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


def test_the_size_limit_message_uses_readable_units(repo):
    _, tmp_path = repo
    size = (tmp_path / "hn" / "model.safetensors").stat().st_size + (tmp_path / "hn" / "config.json").stat().st_size
    with pytest.raises(PullError, match=rf"would download {size / 1024:.1f} KiB \(2 files\), more than the "
                                        rf"1,000 bytes limit"):
        download("tester/hn", tmp_path / "out", max_bytes=1000)


def test_files_in_sub_folders_are_checked_like_the_rest(repo, capsys):
    api, tmp_path = repo
    api.upload_file(path_or_fileobj=b"\x00" * 16, path_in_repo="model-extra/part-of-2.safetensors", repo_id="tester/hn")
    error = _pull_error(capsys, "tester/hn", "--output", str(tmp_path / "out"))
    assert "model-extra/part-of-2.safetensors" in error and "not a readable safetensors file" in error
    assert not (tmp_path / "out").exists()
