"""Where a save may write: never over a file, never over a folder holding files peft-shine did not write.

Rule (used by `save_adapter`, ``shine chat --save-adapter``, ``shine quickstart`` and ``shine pull``):

* A missing target is created: the folder is built under a hidden temporary name and renamed into place.
* An existing **file** or **symbolic link** is always refused: a file is never turned into a folder.
* An existing **empty folder** is kept and the files are moved into it, one atomic ``os.replace`` each.
* A folder is **ours** when every entry in it is a plain file with a name peft-shine writes (:data:`OWN_FILES`,
  sharded ``model-*-of-*.safetensors`` weights, and the extra files of the save at hand such as a card) or a hidden
  temporary of our atomic writers (``.<name>.tmp-*`` / ``.<name>.old-*``), and it holds a config we write
  (``adapter_config.json`` or ``config.json``): a previous adapter or hypernetwork folder. It is replaced as a
  whole, atomically (the old folder, which holds only our files, is deleted afterwards).
* Any other non-empty folder (source files, a ``.git/`` folder, sub-folders, other files) is refused with
  `TargetExistsError`, unless ``overwrite=True``: then only the files of this save are written into it (each
  replaced atomically) and everything else in it is kept.

The working directory (or a folder above it) is never swapped out: it is written into file by file.

A hypernetwork's ``save_pretrained`` writes into its folder file by file and keeps every other file (Trainer output
folders hold checkpoints and plots): `check_hypernetwork_folder` only refuses a target that is a file, or whose
``config.json`` / weights are not a SHINE hypernetwork's, since those would be replaced.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from peft_shine.errors import TargetExistsError
from peft_shine.storage.io_utils import atomic_directory, staged_files


__all__ = ["OWN_FILES", "TargetExistsError", "check_hypernetwork_folder", "foreign_entries", "guarded_directory",
           "write_mode"]

OWN_FILES = frozenset({
    "adapter_config.json", "adapter_model.safetensors", "README.md",
    "config.json", "model.safetensors", "model.safetensors.index.json",
})
OWN_PATTERNS = ("model-*-of-*.safetensors",)
OWN_CONFIGS = ("adapter_config.json", "config.json")
_TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)-(?:\d+-)?[0-9a-f]{8}$")  # io_utils' hidden temporaries



def _is_own_name(name: str, extra_names: Iterable[str]) -> bool:
    return name in OWN_FILES or name in extra_names or any(fnmatch.fnmatch(name, p) for p in OWN_PATTERNS)


def foreign_entries(folder: Path, extra_names: Iterable[str] = ()) -> list[str]:
    """Entries of ``folder`` that peft-shine did not write (sorted; sub-folders end with ``/``)."""
    extra = set(extra_names)
    foreign = []
    for entry in folder.iterdir():
        if _TEMPORARY.match(entry.name):
            continue
        if entry.is_symlink() or not entry.is_file():
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
        elif not _is_own_name(entry.name, extra):
            foreign.append(entry.name)
    return sorted(foreign)


def _refusal(target: Path, foreign: list[str], what: str) -> TargetExistsError:
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return TargetExistsError(
        f"{target} already exists and holds files peft-shine did not write ({shown}); saving the {what} there could "
        f"destroy them, so nothing was written. Choose a new or empty folder, or pass overwrite=True (--overwrite on "
        f"the command line) to write the {what} files into it and keep everything else."
    )


def _is_working_directory(target: Path) -> bool:
    cwd = Path.cwd().resolve()
    return target.resolve() in (cwd, *cwd.parents)


def write_mode(target: str | Path, *, extra_names: Iterable[str] = (), overwrite: bool = False,
               what: str = "adapter") -> str:
    """How a save into ``target`` proceeds: ``"create"``, ``"replace"`` (ours, swapped whole) or ``"merge"``
    (written into the existing folder file by file). Raises `TargetExistsError` when it must not write at all."""
    target = Path(target).absolute()
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise TargetExistsError(f"{target} exists and is not a folder; the {what} is a folder of files and would "
                                f"replace it, so nothing was written. Choose a folder path.")
    if not target.exists():
        return "create"
    entries = [entry for entry in target.iterdir() if not _TEMPORARY.match(entry.name)]
    if not entries or _is_working_directory(target):
        foreign = foreign_entries(target, extra_names)
        if foreign and not overwrite:
            raise _refusal(target, foreign, what)
        return "merge"
    foreign = foreign_entries(target, extra_names)
    if not foreign and any((target / name).is_file() for name in OWN_CONFIGS):
        return "replace"
    if not overwrite:
        raise _refusal(target, foreign or ["no adapter_config.json or config.json"], what)
    return "merge"


@contextlib.contextmanager
def guarded_directory(target: str | Path, *, extra_names: Iterable[str] = (), overwrite: bool = False,
                      what: str = "adapter") -> Iterator[Path]:
    """Yield an empty temporary folder to fill; on success its files land in ``target`` following the module rule.

    The check runs before the block, so a refused target costs no work and is left exactly as it was. If the block
    raises, ``target`` is unchanged.
    """
    mode = write_mode(target, extra_names=extra_names, overwrite=overwrite, what=what)
    writer = atomic_directory if mode in ("create", "replace") else staged_files
    with writer(target) as staging:
        yield staging
        if mode == "replace":  # check again just before the swap: nothing foreign may have arrived meanwhile
            write_mode(target, extra_names=extra_names, overwrite=False, what=what)


def check_hypernetwork_folder(folder: str | Path, *, overwrite: bool = False) -> None:
    """Refuse a hypernetwork save into a file, or over a ``config.json`` / ``model.safetensors`` that is not a SHINE
    hypernetwork's (another model's folder), unless ``overwrite=True``. Other files are never touched."""
    folder = Path(folder).absolute()
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise TargetExistsError(f"{folder} exists and is not a folder; a hypernetwork is saved as a folder, so nothing "
                                f"was written. Choose a folder path.")
    config, weights = folder / "config.json", folder / "model.safetensors"
    if overwrite or not (config.exists() or weights.exists()):
        return
    try:
        ours = json.loads(config.read_text(encoding="utf-8")).get("model_type") == "shine"
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise TargetExistsError(
            f"{folder} already holds a config.json or model.safetensors that is not a SHINE hypernetwork's; saving "
            f"there would replace them, so nothing was written. Choose another folder, or pass overwrite=True."
        )
