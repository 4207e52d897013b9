"""The fake Hub against the real clients: huggingface_hub, transformers push_to_hub/from_pretrained and peft."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hub_server import READ_TOKEN, WRITE_TOKEN, FakeHub
from tiny_models import make_char_tokenizer, make_tiny_lm


pytest_plugins = ["hub_fixtures"]

REPO = "tester/demo"


def _seed_with_api(tmp_path: Path) -> tuple[HfApi, str]:
    """Create `REPO` with a README and a folder upload; return the api and the main commit sha."""
    api = HfApi()
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"# demo\n", path_in_repo="README.md", repo_id=REPO, commit_message="Add card")
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 8)
    (folder / "sub" / "notes.txt").write_text("nested\n")
    info = api.upload_folder(folder_path=folder, repo_id=REPO, commit_message="Upload folder")
    return api, info.oid


def test_create_repo_visibility_and_conflicts(hub_env: FakeHub) -> None:
    api = HfApi()
    url = api.create_repo("tester/public")
    assert url.repo_id == "tester/public" and url.startswith(hub_env.url)
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("tester/public")
    assert conflict.value.response.status_code == 409
    assert api.create_repo("tester/public", exist_ok=True).repo_id == "tester/public"
    assert api.create_repo("implicit-namespace").repo_id == "tester/implicit-namespace"

    api.create_repo("tester/secret", private=True)
    assert api.model_info("tester/secret").private is True
    assert HfApi(token=READ_TOKEN).model_info("tester/secret").id == "tester/secret"
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/secret", token=False)
    assert api.model_info("tester/public", token=False).private is False
    assert api.whoami()["name"] == "tester"


def test_upload_download_branches_and_shas(hub_env: FakeHub, tmp_path: Path) -> None:
    api, main_sha = _seed_with_api(tmp_path)
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "README.md", "sub/notes.txt", "weights.bin"]
    assert [commit.title for commit in api.list_repo_commits(REPO)][:2] == ["Upload folder", "Add card"]
    assert api.model_info(REPO).sha == main_sha

    api.create_branch(REPO, branch="dev")
    dev = api.upload_file(path_or_fileobj=b"dev only\n", path_in_repo="dev.txt", repo_id=REPO, revision="dev")
    api.upload_file(path_or_fileobj=b"# demo v2\n", path_in_repo="README.md", repo_id=REPO, commit_message="v2")

    assert Path(hf_hub_download(REPO, "README.md")).read_bytes() == b"# demo v2\n"
    assert Path(hf_hub_download(REPO, "README.md", revision=main_sha)).read_bytes() == b"# demo\n"
    assert Path(hf_hub_download(REPO, "dev.txt", revision="dev")).read_bytes() == b"dev only\n"
    assert Path(hf_hub_download(REPO, "dev.txt", revision=dev.oid)).read_bytes() == b"dev only\n"
    weights = Path(hf_hub_download(REPO, "weights.bin")).read_bytes()
    assert weights == hub_env.file_bytes(REPO, "weights.bin") == bytes(range(256)) * 8
    assert "dev.txt" not in api.list_repo_files(REPO)
    assert {ref.name for ref in api.list_repo_refs(REPO).branches} == {"main", "dev"}

    top = {entry.path for entry in api.list_repo_tree(REPO)}
    assert top == {".gitattributes", "README.md", "weights.bin", "sub"}
    assert [entry.path for entry in api.get_paths_info(REPO, ["sub", "missing.txt"])] == ["sub"]
    snapshot = Path(snapshot_download(REPO, revision="dev"))
    assert (snapshot / "sub" / "notes.txt").read_text() == "nested\n"
    partial = httpx2.get(f"{hub_env.url}/{REPO}/resolve/main/weights.bin", headers={"Range": "bytes=2-5"})
    assert partial.status_code == 206 and partial.content == bytes([2, 3, 4, 5])


def test_dataset_repos(hub_env: FakeHub) -> None:
    api = HfApi()
    api.create_repo("tester/data", repo_type="dataset", private=True)
    api.upload_file(path_or_fileobj=b'{"q": 1}\n', path_in_repo="train.jsonl", repo_id="tester/data", repo_type="dataset")
    path = hf_hub_download("tester/data", "train.jsonl", repo_type="dataset")
    assert Path(path).read_bytes() == b'{"q": 1}\n'
    assert api.dataset_info("tester/data").private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/data")  # same id, other repo type


def test_errors_map_to_hub_exceptions(hub_env: FakeHub, tmp_path: Path) -> None:
    api, _ = _seed_with_api(tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/missing")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "README.md", revision="no-such-branch")
    assert api.file_exists(REPO, "README.md") and not api.file_exists(REPO, "nope.json")


def test_auth_wrong_token_and_read_only(hub_env: FakeHub, tmp_path: Path) -> None:
    _seed_with_api(tmp_path)
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(token="hf_wrong_token").model_info(REPO)
    assert wrong.value.response.status_code == 401 and not isinstance(wrong.value, RepositoryNotFoundError)
    with pytest.raises(HfHubHTTPError) as read_only:
        HfApi(token=READ_TOKEN).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO)
    assert read_only.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as anonymous:
        HfApi(token=False).create_repo("tester/anonymous")
    assert anonymous.value.response.status_code == 401

    log = hub_env.requests
    assert any(entry.has_auth for entry in log) and any(not entry.has_auth for entry in log)
    assert all(WRITE_TOKEN not in repr(entry) and READ_TOKEN not in repr(entry) for entry in log)


@pytest.mark.parametrize(("mode", "error"), [("disconnect", httpx2.TransportError), ("status", HfHubHTTPError)])
def test_interrupted_commit_raises_and_changes_nothing(
    hub_env: FakeHub, tmp_path: Path, mode: str, error: type[Exception]
) -> None:
    api, main_sha = _seed_with_api(tmp_path)
    hub_env.fail_next("commit", mode=mode)
    with pytest.raises(error):
        api.upload_file(path_or_fileobj=b"lost\n", path_in_repo="lost.txt", repo_id=REPO)
    assert hub_env.get_repo(REPO).branches["main"] == main_sha
    assert hub_env.requests_to("commit")[-1].status == (None if mode == "disconnect" else 500)
    api.upload_file(path_or_fileobj=b"kept\n", path_in_repo="kept.txt", repo_id=REPO)
    assert hub_env.file_bytes(REPO, "kept.txt") == b"kept\n"


def test_transformers_push_to_hub_and_from_pretrained(hub_env: FakeHub, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = make_tiny_lm("llama"), make_char_tokenizer()
    model.push_to_hub("tester/tiny-llama", commit_message="Upload tiny llama")
    tokenizer.push_to_hub("tester/tiny-llama")
    model.save_pretrained(tmp_path / "local")
    pushed = hub_env.file_bytes("tester/tiny-llama", "model.safetensors")
    assert pushed == (tmp_path / "local" / "model.safetensors").read_bytes()

    # eager attention as in make_tiny_lm (the attention implementation is not part of the saved config)
    loaded = AutoModelForCausalLM.from_pretrained("tester/tiny-llama", attn_implementation="eager").eval()
    expected = model.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in loaded.state_dict().items())
    loaded_tokenizer = AutoTokenizer.from_pretrained("tester/tiny-llama")
    ids = loaded_tokenizer("Hello hub", return_tensors="pt").input_ids
    assert ids.tolist() == tokenizer("Hello hub", return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_peft_adapter_push_to_hub_and_from_pretrained(hub_env: FakeHub) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(make_tiny_lm("llama"), config).eval()
    adapted.push_to_hub("tester/tiny-lora")
    files = set(HfApi().list_repo_files("tester/tiny-lora"))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files

    loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), "tester/tiny-lora").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, adapted(input_ids=ids).logits)
        assert not torch.equal(loaded(input_ids=ids).logits, make_tiny_lm("llama")(input_ids=ids).logits)
