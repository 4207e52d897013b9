"""Atomic file-system writes used across peft-shine.

Everything the library persists (adapters, hypernetwork checkpoints, converted base models, JSON reports) goes
through these helpers so that a crash, a ``SIGKILL`` or a full disk never leaves a half-written file or folder
under its final name: a reader either sees the complete old content or the complete new content.

* :func:`atomic_file` / :func:`atomic_write_bytes` / :func:`atomic_write_text` write a temporary file in the
  target's directory, flush and ``fsync`` it, then ``os.replace`` it over the target.
* :func:`atomic_save_safetensors` does the same for a ``safetensors`` file.
* :func:`atomic_directory` builds a whole folder under a hidden temporary name next to the target and swaps it in
  at the end (rename the old folder aside, rename the new one into place, delete the old one).

Temporaries are named ``.{target name}.tmp-<pid>-<random>`` (folders being replaced are parked as
``.{target name}.old-<pid>-<random>``), so they live on the same file system as the target and are hidden from
ordinary listings. A process killed mid-write can leave such a temporary behind; it is never mistaken for the
target, and every later write of the same target deletes it (:func:`remove_stale_temporaries`): a leftover is
stale as soon as the process named in it is gone (checked on this machine; a writer on another machine sharing the
file system, or in another PID namespace, looks gone too and its save then fails cleanly rather than silently), and
a leftover without a process id after an hour.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from peft_shine.errors import ArgumentError, ConfigError, MissingFileError, StorageError


__all__ = [
    "atomic_directory",
    "atomic_file",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_stale_temporaries",
    "staged_files",
]

_TMP_TAG = ".tmp-"
_OLD_TAG = ".old-"
_OWNER_PATTERN = re.compile(r"\.(?:tmp|old)-(\d+)-[0-9a-f]+$")
STALE_AGE_S = 3600.0  # leftovers that name no process are removed after this long


def _current_umask() -> int:
    """Return the process umask without changing it where the platform allows (Linux ``/proc``)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # not thread-safe, hence only the fallback
    os.umask(mask)
    return mask


def _fsync_path(path: Path) -> None:
    """``fsync`` a file or a directory; silently skipped where the platform refuses (e.g. directories on Windows)."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """``fsync`` every file and directory below ``root`` (children before parents)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for filename in filenames:
            file_path = Path(dirpath, filename)
            if not file_path.is_symlink():
                _fsync_path(file_path)
        _fsync_path(Path(dirpath))


def _sibling_name(target: Path, tag: str) -> Path:
    """A hidden, random sibling path of ``target`` naming this process, e.g. ``.model.tmp-4242-1a2b3c4d``."""
    return target.with_name(f".{target.name}{tag}{os.getpid()}-{secrets.token_hex(4)}")


_OS_ERROR_PATTERN = re.compile(r"os error (\d+)")


@contextlib.contextmanager
def _plain_os_errors() -> Iterator[None]:
    """Re-raise I/O failures that writers report as their own exception types (safetensors' ``SafetensorError``
    on a full disk) as the `OSError` they are, so callers and the command line treat every write failure alike."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:
        match = _OS_ERROR_PATTERN.search(str(error))
        if match is None or "I/O error" not in str(error):
            raise
        code = int(match.group(1))
        raise StorageError(code, f"{os.strerror(code)} while writing ({error})") from error


def _writer_is_gone(name: str) -> bool | None:
    """Whether the process that created the temporary ``name`` has exited (``None``: the name records no process)."""
    match = _OWNER_PATTERN.search(name)
    if match is None:
        return None
    pid = int(match.group(1))
    if pid == os.getpid():
        return False  # another thread of this process may be writing it
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process, or a number no process can have
        return True
    except OSError:  # exists but belongs to someone else
        return False
    return False


def _make_temp_dir(target: Path) -> Path:
    """Create a fresh hidden directory next to ``target``, with the permissions a plain ``mkdir`` would give."""
    for _ in range(100):
        candidate = _sibling_name(target, _TMP_TAG)
        try:
            candidate.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return candidate
    raise StorageError(f"could not create a temporary directory next to {target}")


def _remove(path: Path) -> None:
    """Delete a file, symlink or directory tree if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _swap_into_place(new_dir: Path, target: Path) -> None:
    """Move ``new_dir`` to ``target``; an existing ``target`` is parked aside first and restored on failure."""
    if not (target.exists() or target.is_symlink()):
        os.rename(new_dir, target)
        return
    parked = _sibling_name(target, _OLD_TAG)
    os.rename(target, parked)
    try:
        os.rename(new_dir, target)
    except BaseException:
        os.rename(parked, target)
        raise
    _fsync_path(target.parent)
    _remove(parked)


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it into place as ``target`` on success.

    Yields a fresh, empty temporary directory created next to ``target`` (same file system, hidden name
    ``.{name}.tmp-<random>``); fill it inside the ``with`` block. On normal exit its files are ``fsync``-ed and it
    replaces ``target``: an existing ``target`` is renamed aside, the new folder renamed into place, then the old one
    deleted, so ``target`` is only missing for the instant between two renames; if the second rename fails the old
    folder is put back. If the block raises, the temporary directory is deleted and ``target`` is left untouched.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    temp_dir = _make_temp_dir(target)
    try:
        with _plain_os_errors():
            yield temp_dir
        if fsync:
            _fsync_tree(temp_dir)
        _swap_into_place(temp_dir, target)
    except BaseException:
        _remove(temp_dir)
        raise
    if fsync:
        _fsync_path(target.parent)


@contextlib.contextmanager
def staged_files(directory: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Write files into a hidden temporary folder, then move each one into ``directory`` with ``os.replace``.

    Unlike `atomic_directory`, other files already in ``directory`` are kept (a Trainer checkpoint folder, a user's
    output folder). Each file is atomic: a reader sees the complete old or the complete new version, never a partial
    one. If the block raises, nothing in ``directory`` changes.
    """
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory / "staged")
    temp_dir = _make_temp_dir(directory / "staged")
    try:
        with _plain_os_errors():
            yield temp_dir
        for source in sorted(temp_dir.rglob("*")):
            if source.is_file():
                destination = directory / source.relative_to(temp_dir)
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(source, 0o666 & ~_current_umask())  # writers such as safetensors create files 0600
                if fsync:
                    _fsync_path(source)
                os.replace(source, destination)
        if fsync:
            _fsync_path(directory)
    finally:
        _remove(temp_dir)


@contextlib.contextmanager
def atomic_file(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is ``fsync``-ed and ``os.replace``-d over ``path``.

    The caller writes the temporary file by any means (``torch.save``, ``safetensors``, ...). A new file gets the
    permissions of a plain ``open(path, "w")``; an existing file keeps its mode. If the block raises or writes
    nothing, the temporary is deleted and ``path`` is left untouched.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temp_path = _sibling_name(path, _TMP_TAG)
    try:
        with _plain_os_errors():
            yield temp_path
        if not temp_path.is_file():
            raise MissingFileError(f"nothing was written to the temporary file {temp_path}")
        mode = path.stat().st_mode & 0o7777 if path.is_file() else 0o666 & ~_current_umask()
        os.chmod(temp_path, mode)
        if fsync:
            _fsync_path(temp_path)
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_path(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, flush, fsync, ``os.replace``).

    Returns the absolute path written.
    """
    with atomic_file(path, fsync=fsync) as temp_path, open(temp_path, "xb") as handle:
        handle.write(data)
        handle.flush()
    return Path(path).absolute()


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (encoded with ``encoding``, no newline translation).

    Returns the absolute path written.
    """
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor],
    path: str | Path,
    metadata: dict[str, str] | None = None,
    *,
    fsync: bool = True,
) -> Path:
    """Save ``tensors`` as a ``.safetensors`` file at ``path`` atomically.

    Tensors are detached and made contiguous first. ``metadata`` must map strings to strings (the safetensors
    header format). Tensors sharing storage (e.g. tied weights) are rejected by safetensors, as with ``save_file``.
    Returns the absolute path written.
    """
    if metadata is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ArgumentError("safetensors metadata must be a dict[str, str]")
    prepared = {name: tensor.detach().contiguous() for name, tensor in tensors.items()}
    with atomic_file(path, fsync=fsync) as temp_path:
        save_file(prepared, str(temp_path), metadata=metadata)
    return Path(path).absolute()


def remove_stale_temporaries(target: str | Path, *, min_age_s: float = STALE_AGE_S) -> list[Path]:
    """Delete leftover ``.{name}.tmp-*`` / ``.{name}.old-*`` siblings of ``target`` whose writer is gone.

    Such leftovers only exist when a writer was killed. One is removed when the process id in its name no longer
    exists; one naming no process (an older format) when it is older than ``min_age_s`` seconds. Every writer of
    this module calls it for its target first, so a killed save is cleaned by the next save. ``min_age_s=0`` removes
    every leftover: use it only while holding a lock that excludes every other writer of ``target``. Returns the
    paths removed.
    """
    target = Path(target).absolute()
    prefixes = tuple(f".{target.name}{tag}" for tag in (_TMP_TAG, _OLD_TAG))
    try:
        candidates = [path for path in target.parent.iterdir() if path.name.startswith(prefixes)]
    except OSError:  # no parent folder yet, or not readable
        return []
    removed, now = [], time.time()
    for candidate in candidates:
        with contextlib.suppress(OSError):
            gone = _writer_is_gone(candidate.name)
            old = now - candidate.lstat().st_mtime >= min_age_s
            if min_age_s <= 0 or (gone if gone is not None else old):
                _remove(candidate)
                removed.append(candidate)
    return removed


def read_mapping(path: str | os.PathLike | None) -> dict[str, Any]:
    """The JSON or YAML (``.yaml``/``.yml``) mapping in ``path``; an empty dict without a path."""
    if path is None:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) if Path(path).suffix in (".yaml", ".yml") else json.loads(text)
    if data is None and Path(path).suffix in (".yaml", ".yml"):
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (key: value pairs), not {type(data).__name__}.")
    return data
