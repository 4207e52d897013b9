"""The model side of the SHINE demo: hypernetworks, per-session adapters, answers, zips and Hub pushes.

Free of Gradio so it can be used and tested alone; `peft_shine.demo.app` is the UI over it. Isolation rules:

* every session gets fresh adapter names (``s<uuid>``) and only ever answers through its own adapter, named
  explicitly per row (``adapter_names=[...]``); the PeftModel's globally active adapter is never relied on;
* a session's previous adapter is deleted when it generates a new one (or when its Gradio state is dropped);
* model work is serialised by one lock (on top of Gradio's queue);
* nothing returned to a user names a server path (`scrub` removes paths and secrets from error text).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from peft_shine.adapters.contexts import as_context_list, context_sha256
from peft_shine.demo.hub import HUB_ID_PATTERN, push_adapter_to_hub, write_adapter_card
from peft_shine.errors import CheckpointError, DemoError
from peft_shine.prompting import build_prompt, compare_answers, generate_answers
from peft_shine.shipped import LoadedHypernetwork, load_hypernetwork
from peft_shine.storage.base_models import DEFAULT_BASE_MODEL


DEFAULT_KEY = "default"
UNTRAINED_LABEL = "untrained (randomly initialised)"
FOLDER_NAME = "shine-adapter"
ZIP_NAME = f"{FOLDER_NAME}.zip"
MAX_UPLOAD_BYTES = 1_000_000  # an uploaded file, and text pasted into the context box
MAX_CONTEXT_TOKENS = 32_768  # the demo's document limit (the library's is chunking.MAX_DOCUMENT_TOKENS)
MAX_CHAT_TURNS = 4  # earlier turns are dropped from the prompt to keep CPU answers fast
_PATH_PATTERN = re.compile(r"(?<![\w.:/\\-])(?:~|[A-Za-z]:)?(?:[/\\][\w.@+-]+){2,}[/\\]?")



def scrub(message: str, secrets: Iterable[str | None] = ()) -> str:
    """``message`` with secrets replaced by ``***`` and filesystem paths by ``<path>`` (URLs and repo ids kept)."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return _PATH_PATTERN.sub("<path>", message)


Hypernetwork = LoadedHypernetwork  # a loaded hypernetwork, its display label, whether trained, its Hub id


@dataclass
class Adapter:
    """One generated adapter, owned by one session."""

    name: str
    hypernetwork: str
    context: str
    context_sha256: str
    context_tokens: int
    seconds: float
    size_bytes: int
    folder: Path
    zip_path: Path
    chunk_tokens: tuple[int, ...] = ()  # tokens of each chunk when the context was longer than one window


@dataclass(frozen=True)
class Session:
    """Per-browser-session state kept server-side in a ``gr.State``: which hypernetwork and which adapter."""

    hypernetwork: str = DEFAULT_KEY
    adapter: str | None = None


class DemoEngine:
    """Loads hypernetworks lazily and serves generate / chat / compare / zip / push for many sessions."""

    def __init__(self, hypernetwork: str | None = None, base: str = DEFAULT_BASE_MODEL, *, max_new_tokens: int = 64,
                 max_hypernetworks: int = 2, max_adapters: int = 32, allow_local_paths: bool = False,
                 hub_repo: str | None = None, base_options: dict[str, Any] | None = None) -> None:
        """``hypernetwork``: the default hypernetwork (folder or Hub id); without it, ``hub_repo`` (through the Hub
        cache), else the packaged one, else an untrained one (the app shows a banner). ``allow_local_paths``: let
        visitors load server folders (off by default: the answers would reveal which server paths exist).
        ``base_options`` (``dtype``, ``device_map``) reach every base LM loaded."""
        self.default_source, self.base, self.hub_repo = hypernetwork, base, hub_repo
        self.max_new_tokens, self.max_hypernetworks, self.max_adapters = max_new_tokens, max_hypernetworks, max_adapters
        self.allow_local_paths = allow_local_paths
        self.base_options = dict(base_options or {})
        self.workdir = Path(tempfile.mkdtemp(prefix="shine-demo-"))
        self.hypernetworks: dict[str, Hypernetwork] = {}  # least recently used first
        self.adapters: dict[str, Adapter] = {}  # least recently used first
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ hypernetworks
    def hypernetwork(self, key: str = DEFAULT_KEY) -> Hypernetwork:
        """The loaded hypernetwork for ``key`` (the default one is loaded on first use)."""
        with self._lock:
            if key not in self.hypernetworks:
                if key != DEFAULT_KEY:
                    raise DemoError(f"The hypernetwork {key!r} was unloaded to free memory; load it again.")
                self._insert(DEFAULT_KEY, self._load_default())
            self.hypernetworks[key] = self.hypernetworks.pop(key)
            return self.hypernetworks[key]

    def _load_default(self) -> Hypernetwork:
        loaded = load_hypernetwork(self.default_source, base_model=self.base, hub_repo=self.hub_repo,
                                   **self.base_options)
        label = loaded.label.removeprefix("trained hypernetwork ") if loaded.trained else UNTRAINED_LABEL
        return replace(loaded, label=label)

    def _load(self, source: str, allow_untrained: bool = True) -> Hypernetwork:
        """A SHINE checkpoint (Hub id or folder), or an untrained hypernetwork when ``source`` is a plain LM."""
        try:
            loaded = load_hypernetwork(source, base_model=self.base, allow_untrained=allow_untrained,
                                       **self.base_options)
        except CheckpointError as error:  # a public Space does not download arbitrary base models for visitors
            raise DemoError(f"{source} is not a SHINE hypernetwork checkpoint.") from error
        label = Path(source).expanduser().name if loaded.hub_id is None and loaded.trained else source
        return replace(loaded, label=label if loaded.trained else UNTRAINED_LABEL)

    def load_hypernetwork(self, session: Session, source: str) -> tuple[Session, Hypernetwork]:
        """Switch ``session`` to the hypernetwork at ``source`` (Hub repo id, or a local folder if allowed)."""
        source = (source or "").strip()
        is_dir = self.allow_local_paths and Path(source).expanduser().is_dir()
        if not is_dir and not HUB_ID_PATTERN.match(source):
            where = "a Hub repo id like `org/name` or a local folder" if self.allow_local_paths else "a Hub repo id"
            raise DemoError(f"Enter {where}.")
        with self._lock:
            if source not in self.hypernetworks:
                self._insert(source, self._load(source, allow_untrained=self.allow_local_paths))
            self._release(session.adapter)
            return Session(hypernetwork=source), self.hypernetwork(source)

    def _insert(self, key: str, loaded: Hypernetwork) -> None:
        self.hypernetworks[key] = loaded
        evictable = [k for k in self.hypernetworks if k not in (key, DEFAULT_KEY)]
        while len(self.hypernetworks) > self.max_hypernetworks and evictable:
            evicted = evictable.pop(0)
            for name in [n for n, a in self.adapters.items() if a.hypernetwork == evicted]:
                shutil.rmtree(self.adapters.pop(name).folder.parent, ignore_errors=True)
            del self.hypernetworks[evicted]

    # ------------------------------------------------------------------ adapters
    def generate(self, session: Session, context: str) -> tuple[Session, Adapter]:
        """Generate ``session``'s adapter from ``context`` (replacing its previous one) and package it as a zip.

        Raises `peft_shine.ContextError` for empty, non-string or invisible contexts, `DemoError` for a text over
        `MAX_UPLOAD_BYTES` (like an upload) or `MAX_CONTEXT_TOKENS`, before any encoding."""
        as_context_list(context)  # clear ContextError before any model work
        check_text_size(context)
        with self._lock:
            loaded = self.hypernetwork(session.hypernetwork)
            shine, name = loaded.model, f"s{uuid.uuid4().hex[:16]}"
            tokens = len(shine.tokenizer(context, add_special_tokens=False).input_ids)
            if tokens > MAX_CONTEXT_TOKENS:
                raise DemoError(f"The text has {tokens:,} tokens; this demo reads at most {MAX_CONTEXT_TOKENS:,} "
                                f"tokens per context. Shorten it, or run peft-shine yourself: generate_adapter(text, "
                                f"chunking={{'max_document_tokens': ...}}) raises the library's limit.")
            chunking = True if tokens > shine.config.max_context_length else None  # long text: chunk-wise
            started = time.perf_counter()
            shine.generate_adapter(context, adapter_names=name, chunking=chunking)
            seconds = time.perf_counter() - started
            chunks = tuple(shine.adapter_info[name].get("chunk_tokens", ())) if chunking else ()
            digest = context_sha256(context)
            folder, zip_path = self._package(loaded, name, digest, seconds)
            size = (folder / "adapter_model.safetensors").stat().st_size
            adapter = Adapter(name, session.hypernetwork, context, digest, tokens, seconds, size, folder, zip_path,
                              chunks)
            self.adapters[name] = adapter
            self._release(session.adapter)
            while len(self.adapters) > self.max_adapters:
                self._release(next(iter(self.adapters)))
            return replace(session, adapter=name), adapter

    def _package(self, loaded: Hypernetwork, name: str, sha256: str, seconds: float) -> tuple[Path, Path]:
        """Save the adapter as a flat peft folder and zip it (``shine-adapter/…``) in a fresh temp dir."""
        root = self.workdir / uuid.uuid4().hex
        folder = loaded.model.save_adapter(root / FOLDER_NAME, name)
        write_adapter_card(folder, loaded.model, loaded.hub_id, FOLDER_NAME, sha256, seconds)
        zip_path = root / ZIP_NAME
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, f"{FOLDER_NAME}/{file.name}")
        return folder, zip_path

    def _release(self, name: str | None) -> None:
        """Delete an adapter: its files and its weights on the hypernetwork's base."""
        adapter = self.adapters.pop(name, None) if name else None
        if adapter is None:
            return
        shutil.rmtree(adapter.folder.parent, ignore_errors=True)
        loaded = self.hypernetworks.get(adapter.hypernetwork)
        if loaded is not None:
            loaded.model.delete_adapters(name)

    def release_session(self, session: Session | None) -> None:
        """Free a session's adapter (the ``gr.State`` delete callback)."""
        if isinstance(session, Session):
            with self._lock:
                self._release(session.adapter)

    def session_adapter(self, session: Session) -> tuple[Hypernetwork, Adapter]:
        """The session's hypernetwork and adapter, or a `DemoError` telling the user what to do."""
        adapter = self.adapters.get(session.adapter) if session.adapter else None
        if adapter is None:
            hint = "It expired; generate it again." if session.adapter else "Generate one from a context first."
            raise DemoError(f"No adapter for this session. {hint}")
        self.adapters[adapter.name] = self.adapters.pop(adapter.name)
        return self.hypernetwork(adapter.hypernetwork), adapter

    # ------------------------------------------------------------------ answers
    def chat(self, session: Session, history: list[dict], message: str) -> str:
        """The adapter's answer to ``message`` after the earlier turns of ``history`` (no context in the prompt)."""
        if not (message or "").strip():
            raise DemoError("Type a question first.")
        with self._lock:
            loaded, adapter = self.session_adapter(session)
            turns = [{"role": m["role"], "content": message_text(m["content"])} for m in history
                     if m.get("role") in ("user", "assistant")][-2 * MAX_CHAT_TURNS:]
            tokenizer = loaded.model.tokenizer
            prompt = build_prompt(tokenizer, message.strip(), history=turns)
            return generate_answers(loaded.model.peft_model, tokenizer, [prompt], [adapter.name],
                                    self.max_new_tokens)[0]

    def compare(self, session: Session, question: str) -> tuple[str, str, str]:
        """One mixed-adapter batch: (adapter without context, base without context, base with context in prompt)."""
        if not (question or "").strip():
            raise DemoError("Type a question first.")
        with self._lock:
            loaded, adapter = self.session_adapter(session)
            answers = compare_answers(loaded.model.peft_model, loaded.model.tokenizer, [question.strip()],
                                      adapter.context, adapter.name, max_new_tokens=self.max_new_tokens).answers
            return answers["adapter"][0], answers["question_only"][0], answers["in_context"][0]

    def describe(self, session: Session) -> dict[str, Any]:
        """What the session currently uses (no paths, no adapter weights)."""
        with self._lock:
            loaded = self.hypernetwork(session.hypernetwork)
            adapter = self.adapters.get(session.adapter) if session.adapter else None
            summary = None if adapter is None else {
                "context_sha256": adapter.context_sha256, "context_tokens": adapter.context_tokens,
                "generation_seconds": round(adapter.seconds, 3), "size_bytes": adapter.size_bytes,
                "chunk_tokens": list(adapter.chunk_tokens)}
            return {"hypernetwork": loaded.label, "trained": loaded.trained, "origin": loaded.origin,
                    "default": session.hypernetwork == DEFAULT_KEY,
                    "base_model": loaded.model.config.base_model_name_or_path,
                    "max_context_tokens": loaded.model.config.max_context_length, "adapter": summary}

    def push(self, session: Session, repo_id: str, token: str | None, private: bool = True) -> str:
        """Push the session's adapter to ``repo_id``; returns the repo URL."""
        repo_id = (repo_id or "").strip()
        if not HUB_ID_PATTERN.match(repo_id):
            raise DemoError("Enter the target repo as `your-name/adapter-name`.")
        if not token:
            raise DemoError("No Hugging Face token: sign in, or paste a token with write access.")
        with self._lock:
            loaded, adapter = self.session_adapter(session)
            return push_adapter_to_hub(loaded.model, adapter.name, repo_id, token=token, private=private,
                                       folder=adapter.folder, hypernetwork_repo=loaded.hub_id,
                                       context_sha256=adapter.context_sha256, seconds=adapter.seconds)

    def close(self) -> None:
        """Remove the temp dir with every packaged adapter."""
        shutil.rmtree(self.workdir, ignore_errors=True)


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string or Gradio's list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return "" if content is None else str(content)


def check_text_size(text: str) -> None:
    """Refuse pasted text larger than an upload may be (`MAX_UPLOAD_BYTES` of UTF-8)."""
    if len(text) > MAX_UPLOAD_BYTES or len(text.encode("utf-8", errors="replace")) > MAX_UPLOAD_BYTES:
        raise DemoError(f"The text is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB, the limit for uploads too; "
                        f"contexts are much shorter (at most {MAX_CONTEXT_TOKENS:,} tokens here).")


def read_context_file(path: str | Path) -> str:
    """The text of an uploaded ``.txt`` / ``.md`` file (UTF-8, at most 1 MB)."""
    path = Path(path)
    if path.suffix.lower() not in (".txt", ".md"):
        raise DemoError("Upload a .txt or .md file.")
    if path.stat().st_size > MAX_UPLOAD_BYTES:
        raise DemoError(f"The file is larger than {MAX_UPLOAD_BYTES // 1_000_000} MB; contexts are much shorter.")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DemoError("The file is not UTF-8 text.") from None
