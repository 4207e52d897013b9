"""Pytest fixtures that point the real Hugging Face clients at an in-process fake Hub (`tests/hub_server.py`).

Use them from a test module with ``pytest_plugins = ["hub_fixtures"]`` (``tests/`` is on ``sys.path`` under pytest's
default rootdir-relative import mode).

Fixtures:

* ``hub_server`` (function scope): a started `FakeHub` on 127.0.0.1 with a free port, stopped afterwards. Its tokens
  are ``WRITE_TOKEN`` (write) and ``READ_TOKEN`` (read-only) for the user ``tester`` (importable from here).
* ``hub_env`` (function scope, uses ``hub_server``, ``monkeypatch`` and ``tmp_path``): makes every client in this
  process talk to that server, with a fresh cache, and returns the `FakeHub`.

Why constants need patching: ``huggingface_hub.constants`` computes ``ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE``
from ``HF_ENDPOINT`` (and the cache/token paths from ``HF_HOME``) once, at import time, so by the time a fixture runs
setting the environment alone changes nothing for the already-imported modules. What ``hub_env`` does (all undone by
``monkeypatch`` at teardown):

* environment (for anything read at call time and for subprocesses): ``HF_ENDPOINT``, ``HF_TOKEN`` (the write
  token), ``HF_HOME`` and ``HF_HUB_CACHE`` (under ``tmp_path``), ``HF_HUB_DISABLE_XET=1``,
  ``HF_HUB_DISABLE_TELEMETRY=1``; removed: ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE`` (peft reads it from
  ``os.environ``), ``HUGGING_FACE_HUB_TOKEN``, ``HF_TOKEN_PATH``, ``HF_OIDC_RESOURCE`` (an OIDC exchange would take
  precedence over ``HF_TOKEN``), ``HF_HUB_DISABLE_IMPLICIT_TOKEN``, ``HUGGINGFACE_CO_STAGING``;
* ``huggingface_hub.constants``: ``ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE`` (read at call time by
  ``hf_hub_url``/``hf_hub_download``, ``ModelCard.validate``, ``HfApi()``), ``HF_URL_HOSTS`` (+ the server host),
  ``HF_HOME``, ``HF_HUB_CACHE``/``HUGGINGFACE_HUB_CACHE``, ``HF_ASSETS_CACHE``/``HUGGINGFACE_ASSETS_CACHE``,
  ``HF_XET_CACHE``, ``HF_TOKEN_PATH``/``HF_STORED_TOKENS_PATH`` (so no real stored token is read),
  ``AGENT_HARNESSES_PATH``, ``HF_HUB_OFFLINE=False``, ``HF_HUB_DISABLE_XET=True``, ``HF_HUB_DISABLE_TELEMETRY=True``;
* copies made at import time: ``huggingface_hub.hf_api.api.endpoint`` (the module-level ``HfApi`` whose bound methods
  are re-exported as ``huggingface_hub.create_repo``, ``upload_folder``, ``file_exists``, ``model_info``, ... — peft
  calls ``file_exists`` through it) and its ``_whoami_cache``; ``transformers.utils.hub._hf_api`` reset to ``None``
  (transformers' lazily created shared ``HfApi`` that ``push_to_hub`` uses, which would keep a stale endpoint);
  ``huggingface_hub.utils._cache_assets.HF_ASSETS_CACHE``;
* ``huggingface_hub.utils._detect_agent._registry`` pinned to an empty registry, so building request headers never
  fetches ``/api/agent-harnesses`` (the fake Hub answers it anyway);
* ``HfFileSystem`` instance cache cleared before and after (fsspec caches instances, with their endpoint).

Nothing in transformers 5.24 or peft 0.21 copies ``ENDPOINT`` itself; both go through ``huggingface_hub`` at call
time. ``HfApi(...)`` objects created *before* the fixture keep their old ``endpoint`` attribute.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants as hf_constants
import pytest

from hub_server import DEFAULT_USER, READ_TOKEN, WRITE_TOKEN, FakeHub, TokenInfo


__all__ = ["DEFAULT_USER", "READ_TOKEN", "WRITE_TOKEN", "hub_env", "hub_server"]

_UNSET_ENV = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HUGGINGFACE_CO_STAGING",
)


@pytest.fixture
def hub_server() -> Iterator[FakeHub]:
    """A running fake Hub (write token `WRITE_TOKEN`, read-only token `READ_TOKEN`)."""
    tokens = {WRITE_TOKEN: TokenInfo(DEFAULT_USER, True), READ_TOKEN: TokenInfo(DEFAULT_USER, False)}
    with FakeHub(tokens) as hub:
        yield hub


@pytest.fixture
def hub_env(hub_server: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """Point huggingface_hub, transformers and peft at `hub_server` with a temporary HF_HOME; yields the hub."""
    home = tmp_path / "hf_home"
    _patch_environment(monkeypatch, hub_server.url, home)
    _patch_constants(monkeypatch, hub_server.url, home)
    _patch_import_time_copies(monkeypatch, hub_server.url, home)
    huggingface_hub.HfFileSystem.clear_instance_cache()
    yield hub_server
    huggingface_hub.HfFileSystem.clear_instance_cache()


def _patch_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """Environment variables read at call time (and inherited by subprocesses)."""
    for name in _UNSET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def _patch_constants(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """`huggingface_hub.constants`, computed from the environment at import time."""
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": hf_constants.HF_URL_HOSTS | {"127.0.0.1", "localhost"},
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    for name, value in values.items():
        monkeypatch.setattr(hf_constants, name, value, raising=hasattr(hf_constants, name))


def _patch_import_time_copies(monkeypatch: pytest.MonkeyPatch, endpoint: str, home: Path) -> None:
    """Objects that captured the endpoint or a path when their module was imported."""
    from huggingface_hub import hf_api
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(hf_api.api, "_whoami_cache", {})
    monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
    cache_assets = sys.modules.get("huggingface_hub.utils._cache_assets")
    if cache_assets is not None:
        monkeypatch.setattr(cache_assets, "HF_ASSETS_CACHE", str(home / "assets"))
    transformers_hub = sys.modules.get("transformers.utils.hub")
    if transformers_hub is not None and hasattr(transformers_hub, "_hf_api"):
        monkeypatch.setattr(transformers_hub, "_hf_api", None)
