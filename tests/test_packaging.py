"""The wheel on its own: built from this checkout, installed outside it, it carries its package data (bundled data,
card templates, the shipped hypernetwork) and its core install (no `datasets`, matplotlib or gradio: accelerate comes with peft) generates
and saves an adapter with the real SmolLM2 and runs the quickstart."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from peft_shine.hub.space import build_wheel


ROOT = Path(__file__).resolve().parents[1]
EXTRAS_ONLY = ("datasets", "matplotlib", "mpl_toolkits", "pylab", "gradio")  # not in the core install
SKIPPED = (*EXTRAS_ONLY, "peft_shine", "__editable__")  # ours comes from the wheel alone


def core_site(work: Path) -> Path:
    """A site folder holding links to this environment's packages minus the extras' (and minus our checkout)."""
    site = work / "core-site"
    site.mkdir()
    packages = Path(subprocess.check_output([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    for entry in packages.iterdir():
        if not entry.name.lower().replace("-", "_").startswith(SKIPPED) and not entry.name.endswith(".pth"):
            (site / entry.name).symlink_to(entry)
    return site


CORE_USE = """
import pathlib, sys
import peft_shine
from peft_shine import AutoShineModel
from peft_shine.shipped import shipped_checkpoint
assert pathlib.Path(peft_shine.__file__).is_relative_to(sys.argv[1]), peft_shine.__file__
shine = AutoShineModel.from_pretrained(shipped_checkpoint())
model = shine.generate_adapter("The Tarn bridge closes every winter at dusk.")
print(sorted(p.name for p in shine.save_adapter(pathlib.Path(sys.argv[2]) / "adapter").iterdir()))
"""


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(ROOT, work / "dist")  # what `shine push space` uploads
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("peft_shine/assets/cards/hypernetwork_card.md", "peft_shine/assets/data/squad_sample.jsonl",
                   "peft_shine/shipped/shine-smollm2-135m-instruct/model.safetensors", "peft_shine_cli.py"):
        assert needed in names
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "shine = peft_shine_cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(work / "site"),
                    str(wheel)], check=True, capture_output=True, timeout=600)
    core_site(work)
    return work


def _run(work: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` in an interpreter without site-packages (``-S``): only the wheel and the core dependencies."""
    env = {**os.environ, "PYTHONPATH": f"{work / 'site'}{os.pathsep}{work / 'core-site'}",
           "PEFT_SHINE_DEFAULT_HYPERNETWORK": ""}
    return subprocess.run([sys.executable, "-S", "-c", code, *args], capture_output=True, text=True,
                          timeout=900, cwd=work, env=env)


@pytest.mark.integration
def test_the_extras_are_really_missing(installed_wheel: Path) -> None:
    result = _run(installed_wheel, "import datasets")
    assert result.returncode != 0 and "No module named 'datasets'" in result.stderr


@pytest.mark.integration
def test_the_core_install_generates_an_adapter_and_runs_the_quickstart(installed_wheel: Path) -> None:
    quickstart = "from peft_shine.cli import main; assert main(['quickstart', '--output', 'qs']) == 0\n"
    result = _run(installed_wheel, CORE_USE + quickstart, str(installed_wheel / "site"), str(installed_wheel))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "adapter_config.json" in result.stdout and "adapter_model.safetensors" in result.stdout
    assert "trained hypernetwork shine-smollm2-135m-instruct" in result.stdout
    assert (installed_wheel / "qs" / "adapter_model.safetensors").is_file()
