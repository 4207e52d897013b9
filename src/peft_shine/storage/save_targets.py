"""Where a save may write: never over a file, never over a folder peft-shine did not write.

Rule (used by `save_adapter`, ``shine chat --save-adapter``, ``shine quickstart`` and ``shine pull``):

* A missing target is created: the folder is built under a hidden temporary name and renamed into place.
* An existing **file** or **symbolic link** is always refused: a file is never turned into a folder.
* An existing **empty folder** is kept and the files are moved into it, one atomic ``os.replace`` each.
* A folder is **ours** only when it says so: for an adapter save, it holds only plain files of an adapter folder
  (``adapter_config.json``, ``adapter_model.safetensors``, a ``README.md`` card and the extra files of the save at
  hand) and its ``adapter_model.safetensors`` carries the marker every peft-shine adapter save writes in its
  safetensors metadata (`adapter_marker`); for a download (``kind="download"``), it holds only the files a pull
  writes and is a SHINE hypernetwork (``config.json`` with ``model_type: shine``) or a marked adapter. Such a
  folder is replaced as a whole, atomically. A ``config.json`` + ``model.safetensors`` alone never makes a folder
  ours: a saved hypernetwork, a transformers model or an adapter saved by peft itself is someone else's.
* Any other non-empty folder is refused with `TargetExistsError`, unless ``overwrite=True``: then only the files of
  this save are written into it (each replaced atomically) and everything else in it is kept.
* A ``README.md`` already in the target is kept unless it is ours and unchanged: the card whose sha256 the
  adapter's marker records, or a file identical to the one being written (`card_is_ours`). An edited card is
  carried into a replaced folder and never overwritten in a merged one. ``PeftModel.save_pretrained`` of a
  generated adapter follows the same rule (`peft_shine.adapters.cards`) and marks the weights peft wrote
  (`mark_adapter_folder`).

The working directory (or a folder above it) is never swapped out: it is written into file by file.

A hypernetwork's ``save_pretrained`` writes into its folder file by file and keeps every other file (Trainer output
folders hold checkpoints and plots), except the stale weight files of the kind it writes (`HYPERNETWORK_WEIGHTS`:
a single file, shards and their index), removed in the same step (`io_utils.staged_files`).
`check_hypernetwork_folder` refuses a target that is a file, or whose ``config.json`` / weights are not a SHINE
hypernetwork's, since those would be replaced.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from peft_shine.errors import TargetExistsError
from peft_shine.storage.io_utils import (
    atomic_directory,
    atomic_save_safetensors,
    recover_interrupted_swap,
    staged_files,
)


__all__ = ["ADAPTER_FILES", "HYPERNETWORK_WEIGHTS", "TargetExistsError", "adapter_marker", "card_is_ours",
           "check_hypernetwork_folder", "foreign_entries", "guarded_directory", "mark_adapter_folder", "write_mode"]

CARD = "README.md"
ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors"})
HYPERNETWORK_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")
DOWNLOAD_FILES = ("config.json", *HYPERNETWORK_WEIGHTS, *ADAPTER_FILES)
MARKER_KEY, CARD_KEY = "peft_shine", "peft_shine_card"  # safetensors metadata of every adapter peft-shine saves
_TEMPORARY = re.compile(r"^\..+\.(?:tmp|old)-(?:\d+-)?[0-9a-f]{8}$")  # io_utils' hidden temporaries


def adapter_marker(card: str | bytes | None = None) -> dict[str, str]:
    """The safetensors metadata that marks ``adapter_model.safetensors`` as written by peft-shine, with the sha256 of
    the card written beside it (empty without one): what makes a later save recognise the folder as ours."""
    data = card.encode("utf-8") if isinstance(card, str) else card
    return {"format": "pt", MARKER_KEY: "adapter", CARD_KEY: hashlib.sha256(data).hexdigest() if data else ""}


def _marker(folder: Path) -> dict[str, str] | None:
    """The peft-shine marker of the adapter weights in ``folder`` (``None``: absent or unreadable)."""
    try:
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None
    return metadata if metadata.get(MARKER_KEY) == "adapter" else None


def _own_names(kind: str) -> tuple[str, ...]:
    return (*ADAPTER_FILES, CARD) if kind == "adapter" else (*DOWNLOAD_FILES, CARD)


def foreign_entries(folder: Path, extra_names: Iterable[str] = (), kind: str = "adapter") -> list[str]:
    """Entries of ``folder`` that a save of ``kind`` does not write (sorted; sub-folders end with ``/``)."""
    patterns = (*_own_names(kind), *extra_names)
    foreign = []
    for entry in folder.iterdir():
        if _TEMPORARY.match(entry.name):
            continue
        if entry.is_symlink() or not entry.is_file():
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
        elif not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in patterns):
            foreign.append(entry.name)
    return sorted(foreign)


def _is_shine_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "shine"


def _is_previous_save(folder: Path, kind: str) -> bool:
    """Whether ``folder`` (holding no foreign entry) says it is a previous save of ``kind`` by peft-shine."""
    if _marker(folder) is not None:
        return True
    return kind == "download" and _is_shine_config(folder / "config.json") and \
        not (folder / "adapter_config.json").exists()


def _refusal(target: Path, foreign: list[str], what: str) -> TargetExistsError:
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    return TargetExistsError(
        f"{target} already exists and is not a previous peft-shine {what} folder ({shown}); saving the {what} there "
        f"could destroy what it holds, so nothing was written. Choose a new or empty folder, or pass overwrite=True "
        f"(--overwrite on the command line) to write the {what} files into it and keep everything else."
    )


def _is_working_directory(target: Path) -> bool:
    cwd = Path.cwd().resolve()
    return target.resolve() in (cwd, *cwd.parents)


def write_mode(target: str | Path, *, extra_names: Iterable[str] = (), overwrite: bool = False,
               what: str = "adapter", kind: str = "adapter") -> str:
    """How a save of ``kind`` (``"adapter"`` or ``"download"``) into ``target`` proceeds: ``"create"``,
    ``"replace"`` (ours, swapped whole) or ``"merge"`` (written into the existing folder file by file). Raises
    `TargetExistsError` when it must not write at all. A folder swap a crash interrupted is undone first."""
    target = Path(target).absolute()
    recover_interrupted_swap(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise TargetExistsError(f"{target} exists and is not a folder; the {what} is a folder of files and would "
                                f"replace it, so nothing was written. Choose a folder path.")
    if not target.exists():
        return "create"
    entries = [entry for entry in target.iterdir() if not _TEMPORARY.match(entry.name)]
    foreign = foreign_entries(target, extra_names, kind)
    if not entries or _is_working_directory(target):
        if foreign and not overwrite:
            raise _refusal(target, foreign, what)
        return "merge"
    if not foreign and _is_previous_save(target, kind):
        return "replace"
    if not overwrite:
        raise _refusal(target, foreign or [f"{', '.join(sorted(e.name for e in entries))}, without the peft-shine "
                                           f"marker"], what)
    return "merge"


def card_is_ours(folder: Path, new_card: str | bytes | None = None) -> bool:
    """Whether the ``README.md`` in ``folder`` may be replaced or removed: there is none, it is the card whose sha256
    the adapter's marker records, or it is identical to ``new_card``. The one rule of every writer of our cards."""
    if not (folder / CARD).is_file():
        return True
    card = (folder / CARD).read_bytes()
    recorded = (_marker(folder) or {}).get(CARD_KEY)
    if recorded and recorded == hashlib.sha256(card).hexdigest():
        return True
    new = new_card.encode("utf-8") if isinstance(new_card, str) else new_card
    return new is not None and new == card


def mark_adapter_folder(folder: Path, card: str | None) -> None:
    """Write our marker (recording ``card``) into the ``adapter_model.safetensors`` that peft's own
    ``save_pretrained`` wrote in ``folder``, atomically: the folder is then ours like one `save_adapter` wrote."""
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():  # peft writes adapter_model.bin instead when asked for safe_serialization=False
        atomic_save_safetensors(load_file(str(weights)), weights, metadata=adapter_marker(card))


def _keep_edited_card(target: Path, staging: Path, mode: str) -> None:
    """Keep a ``README.md`` in ``target`` that is not ours and unchanged: carried into a replacing folder, never
    overwritten in a merged one."""
    new_card = (staging / CARD).read_bytes() if (staging / CARD).is_file() else None
    if mode == "create" or card_is_ours(target, new_card):
        return
    if mode == "replace":
        shutil.copy2(target / CARD, staging / CARD)
    else:
        (staging / CARD).unlink(missing_ok=True)


@contextlib.contextmanager
def guarded_directory(target: str | Path, *, extra_names: Iterable[str] = (), overwrite: bool = False,
                      what: str = "adapter", kind: str = "adapter") -> Iterator[Path]:
    """Yield an empty temporary folder to fill; on success its files land in ``target`` following the module rule.

    The check runs before the block, so a refused target costs no work and is left exactly as it was. If the block
    raises, ``target`` is unchanged.
    """
    mode = write_mode(target, extra_names=extra_names, overwrite=overwrite, what=what, kind=kind)
    writer = atomic_directory if mode in ("create", "replace") else staged_files
    with writer(target) as staging:
        yield staging
        _keep_edited_card(Path(target).absolute(), staging, mode)
        if mode == "replace":  # check again just before the swap: nothing foreign may have arrived meanwhile
            write_mode(target, extra_names=extra_names, overwrite=False, what=what, kind=kind)


def check_hypernetwork_folder(folder: str | Path, *, overwrite: bool = False) -> None:
    """Refuse a hypernetwork save into a file, or over a ``config.json`` / weights (`HYPERNETWORK_WEIGHTS`) that
    are not a SHINE hypernetwork's (another model's folder), unless ``overwrite=True``. Other files are never
    touched."""
    folder = Path(folder).absolute()
    recover_interrupted_swap(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise TargetExistsError(f"{folder} exists and is not a folder; a hypernetwork is saved as a folder, so nothing "
                                f"was written. Choose a folder path.")
    if overwrite or not folder.is_dir():
        return
    config = folder / "config.json"
    weights = [p.name for p in folder.iterdir() if any(fnmatch.fnmatchcase(p.name, w) for w in HYPERNETWORK_WEIGHTS)]
    if (config.exists() or weights) and not _is_shine_config(config):
        raise TargetExistsError(
            f"{folder} already holds a config.json or model weights that are not a SHINE hypernetwork's; saving "
            f"there would replace them, so nothing was written. Choose another folder, or pass overwrite=True."
        )
