"""Every `shine` failure ends in one line on stderr and exit status 2 (issue 19, item 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import make_shine
from peft_shine import ContextError, ShineModel
from peft_shine.cli import main
from tiny_models import make_char_tokenizer, make_tiny_lm, write_training_folder


CONFIG = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "save_strategy": "no",
          "eval_strategy": "no", "use_cpu": True, "disable_tqdm": True, "model": {"lora_rank": 2}}


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("shine ")]
    assert len(lines) == 1 and lines[0].startswith(f"shine {command}: error:") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    return write_training_folder(tmp_path_factory.mktemp("cli-errors"), CONFIG, ["alpha beta gamma"] * 4)


@pytest.mark.parametrize(("content", "name"), [(b"", "empty.jsonl"), (b'{"text": "a"}\n{not json', "bad.jsonl"),
                                               (bytes(range(256)) * 4, "binary.jsonl")])
def test_train_on_bad_data_files(run_folder, tmp_path, capsys, content, name):
    (tmp_path / name).write_bytes(content)
    code = main(["train", "--stage", "pretrain", "--data", str(tmp_path / name), "--base", str(run_folder / "base"),
                 "--config", str(run_folder / "config.json"), "--output", str(tmp_path / "out"), "--max-steps", "1",
                 "--eval-fraction", "0"])
    assert code == 2
    _one_line_error(capsys, "train")


def test_train_on_a_base_whose_pickle_weights_do_not_unpickle(run_folder, tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (run_folder / "base" / name).exists():
            (base / name).write_bytes((run_folder / "base" / name).read_bytes())
    (base / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle at all")
    code = main(["train", "--stage", "pretrain", "--data", str(run_folder / "texts.jsonl"), "--base", str(base),
                 "--config", str(run_folder / "config.json"), "--output", str(tmp_path / "out")])
    assert code == 2
    _one_line_error(capsys, "train")


def test_a_lone_surrogate_in_a_context_is_named():
    shine = make_shine("llama")
    with pytest.raises(ContextError, match=r"Context 0 is not valid Unicode: a lone surrogate '\\udc80' at character 5"):
        shine.generate_adapter("Hello\udc80 world")


def test_the_console_entry_point_reports_one_line_for_bad_input(tmp_path):
    """A real `shine` process (python -m peft_shine.cli), not the function."""
    (tmp_path / "context.bin").write_bytes(b"\xff\xfe\x00bad")
    result = subprocess.run([sys.executable, "-m", "peft_shine.cli", "chat", "--context-file",
                             str(tmp_path / "context.bin"), "--question", "q"], capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("shine chat: error:") and "Traceback" not in result.stderr


@pytest.fixture
def full_disk(tmp_path):
    """A real, tiny tmpfs file system (needs root); skipped where it cannot be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_ends_in_one_line_and_leaves_nothing_behind(full_disk, tmp_path, capsys):
    base = tmp_path / "base"
    make_tiny_lm("llama").save_pretrained(base)
    make_char_tokenizer().save_pretrained(base)
    ShineModel.from_base_model(str(base), lora_rank=2).save_pretrained(tmp_path / "hn")
    (full_disk / "filler").write_bytes(b"x" * 56 * 1024)
    code = main(["chat", "--hypernetwork", str(tmp_path / "hn"), "--context", "The tower is green.",
                 "--question", "Colour?", "--max-new-tokens", "1", "--save-adapter", str(full_disk / "adapter")])
    assert code == 2
    assert "No space left on device" in _one_line_error(capsys, "chat")
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler"]  # no half folder, no hidden temporary


def test_a_full_disk_during_save_pretrained_keeps_the_previous_checkpoint(full_disk):
    folder = full_disk / "hn"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "shine", "previous": True}))
    with pytest.raises(OSError, match="No space left"):
        make_shine("llama").save_pretrained(folder)  # its weights need more than the 64 KiB file system
    assert json.loads((folder / "config.json").read_text()) == {"model_type": "shine", "previous": True}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # no partial file, no hidden temporary


def test_the_demo_does_not_reveal_server_paths_unless_the_operator_allows_local_loading(tmp_path):
    from peft_shine.demo.engine import DemoEngine, DemoError, Session

    (tmp_path / "exists").mkdir()
    engine = DemoEngine()  # the default, also with --share and off a Space
    try:
        answers = set()
        for source in (str(tmp_path / "exists"), str(tmp_path / "missing"), "/etc", "/no/such/dir"):
            with pytest.raises(DemoError) as raised:
                engine.load_hypernetwork(Session(), source)
            answers.add(str(raised.value))
        assert answers == {"Enter a Hub repo id."}  # the same answer whether the path exists or not
        assert not engine.allow_local_paths
    finally:
        engine.close()
    assert build_parser_flag("--allow-local-paths")


def build_parser_flag(flag: str) -> bool:
    from peft_shine.cli import build_parser

    return build_parser().parse_args(["demo", flag]).allow_local_paths


# ---------------------------------------------------------------------------------------------- issue 27, item 8


def test_a_missing_local_hypernetwork_folder_is_named_as_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for source in ("./missing-hn", str(tmp_path / "nothere" / "hn")):
        assert main(["chat", "--hypernetwork", source, "--context", "x", "--question", "q"]) == 2
        line = _one_line_error(capsys, "chat")
        assert "no such folder" in line and source in line and "huggingface.co" not in line


def test_an_unknown_repo_offline_says_offline(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["chat", "--hypernetwork", "someone/missing-hn", "--context", "x", "--question", "q"]) == 2
    line = _one_line_error(capsys, "chat")
    assert "someone/missing-hn" in line and "offline" in line and "not a local folder" in line


def test_a_context_file_that_is_a_folder_is_named_a_folder(tmp_path, capsys):
    assert main(["chat", "--context-file", str(tmp_path), "--question", "q"]) == 2
    line = _one_line_error(capsys, "chat")
    assert "is a folder" in line and str(tmp_path) in line


def test_missing_training_data_is_a_missing_file_not_an_unreachable_hub(run_folder, tmp_path, capsys):
    code = main(["train", "--stage", "pretrain", "--data", str(tmp_path / "missing.jsonl"), "--base",
                 str(run_folder / "base"), "--config", str(run_folder / "config.json"), "--output",
                 str(tmp_path / "out")])
    assert code == 2
    line = _one_line_error(capsys, "train")
    assert "no such file" in line and "missing.jsonl" in line and "Couldn't reach" not in line


@pytest.mark.parametrize(("content", "cause"), [(b"\xff\xfe{}", "not UTF-8"), (b'{"a": ', "not valid JSON"),
                                                (b"[1, 2]", "mapping")])
def test_bad_config_and_card_files_are_named_with_their_cause(run_folder, tmp_path, capsys, content, cause):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    code = main(["train", "--stage", "pretrain", "--data", str(run_folder / "texts.jsonl"), "--base",
                 str(run_folder / "base"), "--config", str(bad), "--output", str(tmp_path / "out")])
    assert code == 2
    line = _one_line_error(capsys, "train")
    assert str(bad) in line and cause in line
    make_shine("llama").save_pretrained(tmp_path / "hn")
    assert main(["card", str(tmp_path / "hn"), "--card", str(bad)]) == 2
    line = _one_line_error(capsys, "card")
    assert str(bad) in line and cause in line


def test_shine_card_advice_names_a_way_it_accepts(run_folder, tmp_path, capsys):
    ShineModel.from_base_model(str(run_folder / "base"), lora_rank=2).save_pretrained(tmp_path / "hn")  # a local base
    assert main(["card", str(tmp_path / "hn")]) == 2
    line = _one_line_error(capsys, "card")
    assert "'base_model: <org/name>' line in the --card file of shine card" in line  # not a --base-model flag


def test_train_refuses_a_foreign_output_folder_before_any_work(run_folder, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code = main(["train", "--stage", "pretrain", "--data", str(run_folder / "texts.jsonl"), "--base",
                 str(run_folder / "base"), "--config", str(run_folder / "config.json"), "--output", str(output),
                 "--max-steps", "1", "--eval-fraction", "0", "--objective", "kd"])
    assert code == 2
    assert "not a SHINE hypernetwork" in _one_line_error(capsys, "train")
    assert sorted(p.name for p in output.iterdir()) == ["config.json"]  # no teacher-cache/, nothing trained
