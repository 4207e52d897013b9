"""The ``shine`` command as the ecosystem's commands behave: ``--version``, ``env``, a fast ``--help`` (the
parser imports nothing heavy), plain-text help on every command and flag, on/off flags, arguments checked before
anything loads."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import peft_shine
from peft_shine.cli import build_parser, main
from peft_shine.cli import defaults as cli_defaults


SRC = Path(peft_shine.__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "gradio", "datasets", "accelerate")
RUN_SHINE = """
import json, sys
import peft_shine_cli
try:
    code = peft_shine_cli.main(sys.argv[2:])
except SystemExit as exit:
    code = exit.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1].split(",")))
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def shine(*argv: str) -> tuple[int, str, list[str]]:
    """Run the ``shine`` console script's entry point in a fresh interpreter: ``(exit code, stdout, heavy modules
    loaded by the end)``; stderr up to the report line is part of the returned output."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("PEFT_SHINE_LAZY_IMPORT", None)
    result = subprocess.run([sys.executable, "-c", RUN_SHINE, ",".join(HEAVY), *argv], capture_output=True,
                            text=True, env=env, timeout=300)
    *messages, report = result.stderr.strip().splitlines()
    status = json.loads(report)
    return status["code"], result.stdout + "\n".join(messages), status["heavy"]


def subcommand_parsers(parser: argparse.ArgumentParser, prefix: str = "shine") -> dict[str, argparse.ArgumentParser]:
    """Every (nested) subcommand parser, by its command line."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found[f"{prefix} {name}"] = child
                found.update(subcommand_parsers(child, f"{prefix} {name}"))
    return found


def test_help_and_version_load_nothing_heavy():
    code, out, heavy = shine("--help")
    assert code == 0 and "env" in out and "quickstart" in out and heavy == []
    code, out, heavy = shine("--version")
    assert code == 0 and out.strip() == f"shine {peft_shine.__version__}" and heavy == []
    for command in ("chat", "train", "eval", "demo", "push", "pull"):
        code, out, heavy = shine(command, "--help")
        assert code == 0 and heavy == [], (command, heavy)


def test_eval_on_missing_data_fails_before_anything_loads(tmp_path):
    code, out, heavy = shine("eval", "--data", str(tmp_path / "nonexistent.jsonl"), "--output", str(tmp_path / "o"))
    assert code == 2 and "is neither an existing JSONL file nor a bundled QA name" in out
    assert heavy == [] and not (tmp_path / "o").exists()


def test_every_command_and_flag_has_plain_text_help():
    for name, parser in subcommand_parsers(build_parser()).items():
        text = parser.format_help()
        assert parser.description, f"{name} has no description"
        assert "``" not in text and "::" not in text and "`" not in text, f"{name}: docstring markup in its help"
        for action in parser._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings[0]} has no help"


def test_share_is_an_on_off_flag_and_refused_with_local_paths(capsys):
    assert build_parser().parse_args(["demo", "--share"]).share is True
    assert build_parser().parse_args(["demo", "--no-share"]).share is False
    assert main(["demo", "--share", "--allow-local-paths"]) == 2
    assert "--allow-local-paths" in capsys.readouterr().err


def test_parser_defaults_are_the_library_values():
    from peft_shine.base_models import DEFAULT_BASE_MODEL
    from peft_shine.evaluation import conditions
    from peft_shine.loading import DTYPES, SPREAD
    from peft_shine.shipped import DEFAULT_HUB_REPO
    from peft_shine.training.arguments import OBJECTIVES

    library = (OBJECTIVES, DEFAULT_BASE_MODEL, DEFAULT_HUB_REPO, tuple(DTYPES), SPREAD, tuple(conditions.CONDITIONS),
               tuple(conditions.DEFAULT_CONDITIONS), tuple(conditions.RECALL_CONDITIONS),
               conditions.DEFAULT_RECALL_MAX_NEW_TOKENS, conditions.RECALL_MARGIN)
    shown = (cli_defaults.OBJECTIVES, cli_defaults.DEFAULT_BASE_MODEL, cli_defaults.DEFAULT_HUB_REPO, cli_defaults.DTYPE_NAMES,
             cli_defaults.SPREAD, cli_defaults.CONDITIONS, cli_defaults.DEFAULT_CONDITIONS,
             cli_defaults.RECALL_CONDITIONS, cli_defaults.DEFAULT_RECALL_MAX_NEW_TOKENS, cli_defaults.RECALL_MARGIN)
    assert library == shown


def test_env_reports_versions_cpu_features_devices_and_caches(capsys):
    from peft_shine.base_models import embedded_base_path
    from peft_shine.storage.cpu_flags import REPORTED_FLAGS, bf16_speed_note, cpu_flags

    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for label in ("python:", "torch:", "transformers:", "peft:", "accelerate:", "cpu features:", "bf16 matmul on cpu:",
                  "dtype auto on cpu:", "cuda:", "hf hub cache:"):
        assert f"- {label}" in out, label
    assert str(embedded_base_path()) in out and peft_shine.__version__ in out
    shown = next(line for line in out.splitlines() if line.startswith("- cpu features:"))
    present = [flag for flag in REPORTED_FLAGS if flag in cpu_flags()]
    assert all(flag in shown for flag in present) and (present or "none of" in shown), shown
    assert bf16_speed_note(["avx2"]).startswith("slow") and bf16_speed_note(["amx_bf16"]).startswith("native")
    assert "decides per workload" in bf16_speed_note(["avx512_bf16"])


@pytest.mark.parametrize("argv", [["train", "--stage", "pretrain", "--data", "missing.jsonl", "--output", "o"],
                                  ["train", "--stage", "pretrain", "--data", "wikitext", "--output", "o",
                                   "--config", "missing.yaml"]])
def test_train_checks_its_local_inputs_before_loading(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert "no such" in capsys.readouterr().err and not (tmp_path / "o").exists()
