"""Saving never deletes what it did not write (issue 19, item 1): refused targets, overwrite, stale temporaries."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from conftest import make_shine
from peft_shine import ShineModel
from peft_shine.cli import main
from peft_shine.storage.io_utils import remove_stale_temporaries
from peft_shine.storage.save_targets import TargetExistsError
from tiny_models import make_char_tokenizer, make_tiny_lm


pytest_plugins = ["hub_fixtures"]

CONTEXT = "The lighthouse keeper of Varnholm paints the tower green every spring."


@pytest.fixture(scope="module")
def shine():
    model = make_shine("llama", lora_scale=0.05)
    model.generate_adapter(CONTEXT)
    return model


def _project(folder: Path) -> dict[str, bytes]:
    """A small 'working directory' with source files and a .git folder; returns its files' contents."""
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "main.py").write_text("print('precious')\n")
    (folder / "README.md").write_text("# my project\n")
    return _snapshot(folder)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


def test_saving_into_the_working_directory_is_refused_and_changes_nothing(shine, tmp_path, monkeypatch):
    before = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TargetExistsError, match=r"\.git/.*main\.py.*overwrite=True"):
        shine.save_adapter(".")
    assert _snapshot(tmp_path) == before


def test_overwrite_writes_only_the_adapter_files_into_a_foreign_folder(shine, tmp_path, monkeypatch):
    before = _project(tmp_path)
    monkeypatch.chdir(tmp_path)
    shine.save_adapter(".", overwrite=True)
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # README.md is not one the adapter writes
    assert set(after) - set(before) == {"adapter_config.json", "adapter_model.safetensors"}
    loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), tmp_path)
    assert loaded.peft_config["default"].r == shine.config.lora_rank


def test_an_existing_file_is_never_turned_into_a_folder(shine, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(TargetExistsError, match="not a folder"):
            shine.save_adapter(target, overwrite=overwrite)
    assert target.read_text() == "keep me" and _siblings(target) == []


def test_a_previous_adapter_folder_is_replaced_and_an_empty_folder_is_used(shine, tmp_path):
    target = tmp_path / "adapter"
    target.mkdir()
    shine.save_adapter(target)  # empty folder: written into
    first = load_file(target / "adapter_model.safetensors")
    other = make_shine("llama", seed=1, lora_scale=0.05)
    other.generate_adapter(CONTEXT)
    other.save_adapter(target)  # our previous adapter: replaced without overwrite=True
    second = load_file(target / "adapter_model.safetensors")
    assert first.keys() == second.keys() and not all(torch.equal(first[k], second[k]) for k in first)
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "adapter_config.json",
                                                        "adapter_model.safetensors"]
    assert _siblings(target) == []
    (target / "my_notes.txt").write_text("mine")  # now it is no longer only ours
    with pytest.raises(TargetExistsError, match="my_notes.txt"):
        shine.save_adapter(target)


def test_hypernetwork_save_refuses_another_models_folder(tmp_path):
    folder = tmp_path / "base"
    make_tiny_lm("llama").save_pretrained(folder)
    shine = make_shine("llama")
    before = _snapshot(folder)
    with pytest.raises(TargetExistsError, match="not a SHINE hypernetwork"):
        shine.save_pretrained(folder)
    assert _snapshot(folder) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(TargetExistsError, match="not a folder"):
        shine.save_pretrained(tmp_path / "file")
    shine.save_pretrained(tmp_path / "hn")
    (tmp_path / "hn" / "loss.png").write_bytes(b"png")
    shine.save_pretrained(tmp_path / "hn")  # our own folder: files replaced, others kept
    assert (tmp_path / "hn" / "loss.png").read_bytes() == b"png"


def _hypernetwork_folder(tmp_path: Path) -> Path:
    """A saved tiny hypernetwork whose config names a local base folder (what the CLI loads)."""
    base = tmp_path / "base"
    make_tiny_lm("llama").save_pretrained(base)
    make_char_tokenizer().save_pretrained(base)
    ShineModel.from_base_model(str(base), lora_rank=2).save_pretrained(tmp_path / "hn")
    return tmp_path / "hn"


def test_cli_chat_and_quickstart_refuse_the_working_directory(tmp_path, monkeypatch, capsys):
    hypernetwork = _hypernetwork_folder(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    before = _project(project)
    monkeypatch.chdir(project)
    capsys.readouterr()
    chat = ["chat", "--hypernetwork", str(hypernetwork), "--context", CONTEXT, "--question", "Colour?",
            "--max-new-tokens", "2", "--save-adapter", "."]
    assert main(chat) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("shine chat: error:") and "\n" not in error and "--overwrite" in error
    quickstart = ["quickstart", "--hypernetwork", str(hypernetwork), "--output", "main.py", "--max-new-tokens", "2"]
    assert main(quickstart) == 2
    assert "not a folder" in capsys.readouterr().err
    assert _snapshot(project) == before
    assert main([*chat, "--overwrite"]) == 0
    assert (project / "adapter_config.json").is_file() and (project / "main.py").read_bytes() == before["main.py"]


def test_cli_pull_never_replaces_a_file_or_a_foreign_folder(hub_env, tmp_path, capsys):
    from peft_shine.hub import push_hypernetwork_folder

    make_shine("llama").save_pretrained(tmp_path / "hn")
    push_hypernetwork_folder(tmp_path / "hn", "tester/hn")
    (tmp_path / "file").write_text("keep me")
    project = tmp_path / "project"
    project.mkdir()
    before = _project(project)
    capsys.readouterr()
    for output, flags in ((tmp_path / "file", []), (tmp_path / "file", ["--overwrite"]), (project, [])):
        assert main(["pull", "tester/hn", "--output", str(output), *flags]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and error[0].startswith("shine pull: error:")
    assert (tmp_path / "file").read_text() == "keep me" and _snapshot(project) == before
    assert main(["pull", "tester/hn", "--output", str(project), "--overwrite"]) == 0
    assert {k: v for k, v in _snapshot(project).items() if k in before and k != "README.md"} == \
        {k: v for k, v in before.items() if k != "README.md"}  # the repo's card is one of the downloaded files
    assert (project / "model.safetensors").is_file()


SAVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import torch
    from conftest import make_shine
    shine = make_shine("llama", lora_scale=0.05)
    shine.generate_adapter({context!r})
    shine.save_adapter({target!r})
    print("READY", flush=True)
    while True:
        shine.save_adapter({target!r})
""")


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1])
def test_adapter_save_killed_mid_write_loses_nothing_and_the_next_save_cleans_up(shine, tmp_path, delay):
    target = tmp_path / "adapter"
    (tmp_path / "neighbour.txt").write_text("untouched")
    code = SAVER.format(tests=str(Path(__file__).parent), context=CONTEXT, target=str(target))
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        readable, _, _ = select.select([process.stdout], [], [], 120)
        assert readable and process.stdout.readline().strip() == "READY"
        if delay:
            select.select([], [], [], delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
    loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), target)  # a complete adapter is always in place
    saved = load_file(target / "adapter_model.safetensors")
    assert len(saved) == 2 * 7 * 2 and loaded.peft_config["default"].r == 2
    shine.save_adapter(target)  # the next save removes the killed writer's hidden temporaries
    assert _siblings(target) == ["neighbour.txt"]
    assert not [p for p in target.iterdir() if p.name.startswith(".")]
    assert (tmp_path / "neighbour.txt").read_text() == "untouched"


def test_stale_temporaries_of_a_dead_writer_go_at_once_a_live_ones_stay(tmp_path):
    target = tmp_path / "adapter"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".adapter.tmp-{dead_pid}-0123abcd").mkdir()
    (tmp_path / f".adapter.old-{dead_pid}-0123abcd").mkdir()
    (tmp_path / f".adapter.tmp-{os.getpid()}-0123abcd").mkdir()  # this process: maybe another thread's save
    (tmp_path / ".adapter.tmp-0123abcd").mkdir()  # no process recorded, fresh: kept for an hour
    removed = remove_stale_temporaries(target)
    assert [p.name for p in removed] == [f".adapter.tmp-{dead_pid}-0123abcd"]
    assert target.is_dir()  # the dead writer's parked old folder is put back in place (issue 27), not deleted
    assert _siblings(target) == [".adapter.tmp-0123abcd", f".adapter.tmp-{os.getpid()}-0123abcd"]


SWAP_KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import make_shine
    from peft_shine import io_utils
    shine = make_shine("llama", seed=1, lora_scale=0.05)
    shine.generate_adapter({context!r})
    io_utils.exchange_paths = lambda first, second: False  # a system without an atomic exchange: two renames
    real_rename = os.rename
    def rename(source, destination):
        real_rename(source, destination)
        if ".old-" in str(destination):  # killed right after parking the old folder, before the second rename
            os.kill(os.getpid(), signal.SIGKILL)
    os.rename = rename
    shine.save_adapter({target!r})
""")


def test_a_kill_between_the_two_renames_of_a_swap_is_undone_by_the_next_write(shine, tmp_path):
    from peft_shine.storage.io_utils import recover_interrupted_swap

    target = tmp_path / "adapter"
    shine.save_adapter(target)
    before = _snapshot(target)
    code = SWAP_KILLER.format(tests=str(Path(__file__).parent), context=CONTEXT, target=str(target))
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -signal.SIGKILL
    parked = [p for p in tmp_path.iterdir() if p.name.startswith(".adapter.old-")]
    assert not target.exists() and len(parked) == 1
    assert recover_interrupted_swap(target) == target  # what every later write does first
    assert _snapshot(target) == before
    target.rename(parked[0])  # the state the kill left, again
    shine.save_adapter(target)  # the next save restores the parked folder, then replaces it as a previous save
    assert sorted(p.name for p in target.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert _siblings(target) == [] and len(load_file(target / "adapter_model.safetensors")) == 2 * 7 * 2


def test_the_folder_swap_is_one_atomic_exchange_here(tmp_path):
    from peft_shine.storage.io_utils import exchange_paths

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "old").write_text("old")
    (tmp_path / "b" / "new").write_text("new")
    if not exchange_paths(tmp_path / "b", tmp_path / "a"):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this system or file system: the two-rename path is used")
    assert (tmp_path / "a" / "new").read_text() == "new" and (tmp_path / "b" / "old").read_text() == "old"
