"""Publishing the Gradio demo as a Hugging Face Space that runs without PyPI: the Space folder (``demo/``) plus a
wheel of this checkout, with ``requirements.txt`` pointing at that wheel. The Space then loads its default
hypernetwork from the Hub repo named by ``SHINE_HYPERNETWORK_REPO`` (falling back to the wheel's packaged copy).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi

from peft_shine.errors import MissingFileError, StorageError
from peft_shine.storage.revisions import hub_errors


WHEEL_FOLDER = "wheels"
PACKAGE_LINE = "peft-shine"  # the requirements line replaced by the uploaded wheel


def build_wheel(source: Path, output: Path) -> Path:
    """Build this checkout's wheel (``python -m build``, no isolation: offline) into ``output``."""
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(output),
                             str(source)], capture_output=True, text=True, check=False)
    wheels = sorted(output.glob("peft_shine-*.whl"))
    if result.returncode != 0 or not wheels:
        raise StorageError(f"Could not build the peft-shine wheel from {source} (pip install build, then retry): "
                           f"{result.stderr.strip()[-500:]}")
    return wheels[-1]


def space_requirements(requirements: str, wheel_name: str) -> str:
    """``requirements.txt`` with the peft-shine line replaced by the uploaded wheel (its ``demo`` extra)."""
    lines = []
    for line in requirements.splitlines():
        name = line.split("#")[0].strip().split("[")[0].split("@")[0].split(">")[0].split("=")[0].strip()
        lines.append(f"./{WHEEL_FOLDER}/{wheel_name}" if name == PACKAGE_LINE else line)
    if f"./{WHEEL_FOLDER}/{wheel_name}" not in lines:
        lines.append(f"./{WHEEL_FOLDER}/{wheel_name}")
    return "\n".join(lines) + "\n"


def push_space(folder: str | Path, repo_id: str, *, source: str | Path | None = None, private: bool | None = None,
               token: bool | str | None = None, commit_message: str | None = None) -> CommitInfo:
    """Push the Space folder ``folder`` (``demo/``: README with the Space metadata, ``app.py``,
    ``requirements.txt``) and a wheel built from ``source`` (default: the checkout holding ``folder``) to the Space
    ``repo_id``, in one commit."""
    folder = Path(folder)
    for needed in ("README.md", "app.py", "requirements.txt"):
        if not (folder / needed).is_file():
            raise MissingFileError(f"{folder} is not a Space folder: {needed} is missing (use the repository's "
                                   f"demo/).")
    source = Path(source) if source is not None else folder.resolve().parent
    with tempfile.TemporaryDirectory(prefix="shine-space-") as tmp:
        wheel = build_wheel(source, Path(tmp))
        requirements = space_requirements((folder / "requirements.txt").read_text(encoding="utf-8"), wheel.name)
        operations = [CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
                      for path in sorted(folder.iterdir()) if path.is_file() and path.name != "requirements.txt"]
        operations += [CommitOperationAdd(path_in_repo="requirements.txt", path_or_fileobj=requirements.encode()),
                       CommitOperationAdd(path_in_repo=f"{WHEEL_FOLDER}/{wheel.name}", path_or_fileobj=str(wheel))]
        api = HfApi(token=token)
        with hub_errors("push to", repo_id):
            api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            return api.create_commit(repo_id, operations, repo_type="space",
                                     commit_message=commit_message or "Upload the SHINE demo")
