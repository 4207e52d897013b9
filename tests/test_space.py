"""The Space end to end against the loopback Hub: the shipped checkpoint pushed with `shine push hypernetwork`,
the demo pushed with `shine push space` (a wheel of this checkout, requirements pointing at it), and the demo's
default hypernetwork resolved from the Hub repo, falling back to the packaged copy."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download

from hub_server import FakeHub
from peft_shine.cli import main
from peft_shine.demo.engine import DemoEngine, Session
from peft_shine.shipped import DEFAULT_HUB_REPO, SHIPPED_DIR, SHIPPED_NAME


pytest_plugins = ["hub_fixtures"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_the_demo_loads_its_default_from_the_hub_and_falls_back_to_the_packaged_copy(hub_env: FakeHub) -> None:
    missing = DemoEngine(hub_repo="tester/not-pushed-yet")
    try:
        loaded = missing.hypernetwork()
        assert loaded.trained and loaded.hub_id is None and SHIPPED_NAME in loaded.label
    finally:
        missing.close()
    assert main(["push", "hypernetwork", str(SHIPPED_DIR), DEFAULT_HUB_REPO, "--card",
                 str(ROOT / "configs" / "shine-smollm2-135m-instruct.card.yaml")]) == 0
    engine = DemoEngine(hub_repo=DEFAULT_HUB_REPO)
    try:
        loaded = engine.hypernetwork()
        assert loaded.trained and loaded.hub_id == DEFAULT_HUB_REPO and loaded.model.hub_origin.commit
        assert engine.describe(Session())["hypernetwork"] == DEFAULT_HUB_REPO
    finally:
        engine.close()


@pytest.mark.integration
def test_shine_push_space_uploads_the_demo_with_an_installable_wheel(hub_env: FakeHub, tmp_path: Path) -> None:
    assert main(["push", "space", "tester/shine-demo", "--folder", str(ROOT / "demo")]) == 0
    files = HfApi().list_repo_files("tester/shine-demo", repo_type="space")
    wheels = [name for name in files if name.startswith("wheels/peft_shine-") and name.endswith(".whl")]
    assert {"README.md", "app.py", "requirements.txt"} <= set(files) and len(wheels) == 1
    requirements = Path(hf_hub_download("tester/shine-demo", "requirements.txt", repo_type="space")).read_text()
    lines = [line.strip() for line in requirements.splitlines() if line.strip() and not line.startswith("#")]
    assert f"./{wheels[0]}" in lines and "peft-shine" not in lines and "gradio==6.31.0" in lines
    wheel = hf_hub_download("tester/shine-demo", wheels[0], repo_type="space")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"peft_shine/shipped/{SHIPPED_NAME}/model.safetensors" in names and "peft_shine/demo/app.py" in names
