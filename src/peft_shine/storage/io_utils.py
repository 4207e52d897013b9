"""Atomic file-system writes used across peft-shine.

Everything the library persists (adapters, hypernetwork checkpoints, converted base models, JSON reports) goes
through these helpers so that a crash, a ``SIGKILL`` or a full disk never leaves a half-written file or folder
under its final name: a reader either sees the complete old content or the complete new content.

* :func:`atomic_file` / :func:`atomic_write_bytes` / :func:`atomic_write_text` write a temporary file in the
  target's directory, flush and ``fsync`` it, then ``os.replace`` it over the target.
* :func:`atomic_save_safetensors` does the same for a ``safetensors`` file.
* :func:`atomic_directory` builds a whole folder under a hidden temporary name next to the target and swaps it in
  at the end: one atomic exchange of the two folders on Linux (``renameat2`` ``RENAME_EXCHANGE``); elsewhere the
  old folder is parked as ``.{name}.old-*`` and the new one renamed into place, and a writer killed between the
  two renames is undone by the next write of the target (:func:`recover_interrupted_swap` puts the old copy back).

Temporaries are named ``.{target name}.tmp-<pid>-<random>`` (``.old-`` for parked folders), on the target's file
system and hidden from ordinary listings. One a killed process left behind is never mistaken for the target, and
every later write of the same target deletes it (:func:`remove_stale_temporaries`): a leftover is stale as soon as
the process named in it is gone (checked on this machine; a writer on another machine sharing the file system, or
in another PID namespace, looks gone too and its save then fails cleanly rather than silently), and a leftover
without a process id after an hour.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import os
import re
import secrets
import shutil
import sys
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
    "recover_interrupted_swap",
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


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # linux/fs.h, fcntl.h


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``). Returns False, changing
    nothing, where the system or the file system has no such call; other failures raise `OSError`."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28)
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise StorageError(code, os.strerror(code), str(second))


def _swap_into_place(new_dir: Path, target: Path) -> None:
    """Move ``new_dir`` to ``target``: exchanged atomically with an existing ``target`` (then deleted), or, where the
    system cannot exchange, ``target`` parked aside first (restored on failure, or by the next write after a crash)."""
    if not (target.exists() or target.is_symlink()):
        os.rename(new_dir, target)
        return
    if exchange_paths(new_dir, target):  # ``new_dir`` now holds the old content
        _fsync_path(target.parent)
        _remove(new_dir)
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


def recover_interrupted_swap(target: str | Path) -> Path | None:
    """Undo a folder swap a killed writer left half done: when ``target`` is missing and a writer that is gone
    parked the old folder as ``.{name}.old-*``, rename the newest such copy back to ``target``. Returns ``target``
    when it was restored, else ``None`` (a live writer's parked copy is never touched)."""
    target = Path(target).absolute()
    if target.exists() or target.is_symlink():
        return None
    prefix = f".{target.name}{_OLD_TAG}"
    try:
        parked = [path for path in target.parent.iterdir()
                  if path.name.startswith(prefix) and _writer_is_gone(path.name) is not False]
        newest = max(parked, key=lambda path: path.lstat().st_mtime, default=None)
        if newest is None:
            return None
        os.rename(newest, target)
    except OSError:  # no parent folder, or another process restored it first
        return None
    _fsync_path(target.parent)
    return target


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it into place as ``target`` on success.

    Yields a fresh, empty temporary directory created next to ``target`` (same file system, hidden name
    ``.{name}.tmp-<random>``); fill it inside the ``with`` block. On normal exit its files are ``fsync``-ed and it
    replaces ``target`` (`_swap_into_place`: one atomic exchange on Linux; elsewhere two renames, after which a
    crash is undone by the next write). If the block raises, the temporary directory is deleted and ``target`` is
    left untouched.
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
def staged_files(directory: str | Path, *, fsync: bool = True, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write files into a hidden temporary folder, then move each one into ``directory`` with ``os.replace``.

    Unlike `atomic_directory`, other files already in ``directory`` are kept (a Trainer checkpoint folder, a user's
    output folder), except the files matching a ``replaces`` pattern that this write did not produce (the stale
    shards of a sharded checkpoint now saved whole, say): they are removed right after the new files are in place.
    Each file is atomic: a reader sees the complete old or the complete new version, never a partial one. If the
    block raises, nothing in ``directory`` changes.
    """
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory / "staged")
    temp_dir = _make_temp_dir(directory / "staged")
    try:
        with _plain_os_errors():
            yield temp_dir
        written = set()
        for source in sorted(temp_dir.rglob("*")):
            if source.is_file():
                destination = directory / source.relative_to(temp_dir)
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(source, 0o666 & ~_current_umask())  # writers such as safetensors create files 0600
                if fsync:
                    _fsync_path(source)
                os.replace(source, destination)
                written.add(destination.name)
        for stale in sorted(directory.iterdir()):
            if stale.name not in written and any(fnmatch.fnmatchcase(stale.name, p) for p in replaces) \
                    and stale.is_file() and not stale.is_symlink():
                stale.unlink()
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
    recover_interrupted_swap(target)  # a parked old folder goes back in place, not to the bin
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
    """The JSON or YAML (``.yaml``/``.yml``) mapping in ``path``; an empty dict without a path. Every failure names
    the file and its cause: missing, a folder, not UTF-8, not valid JSON/YAML, not a mapping."""
    if path is None:
        return {}
    path, kind = Path(path), "YAML" if Path(path).suffix in (".yaml", ".yml") else "JSON"
    if not path.is_file():
        raise (ConfigError(f"{path} is a folder; pass a JSON or YAML file.") if path.is_dir() else
               MissingFileError(f"no such file {path}; pass an existing JSON or YAML file."))
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}).") from None
    except (ValueError, yaml.YAMLError) as error:
        raise ConfigError(f"{path} is not valid {kind}: {' '.join(str(error).split())}.") from None
    data = {} if data is None and kind == "YAML" else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (key: value pairs), not {type(data).__name__}.")
    return data
