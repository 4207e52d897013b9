"""Sharing SHINE hypernetworks and generated adapters on the Hugging Face Hub.

* `push` — `push_hypernetwork`, `push_hypernetwork_folder`, `push_adapter`, `push_adapter_folder`: one atomic commit
  each, with a SHINE model card rendered by `cards` (templates shipped as package data in ``templates/``).
* `pull` — `pull_hypernetwork`, `pull_adapter`, `download` (``shine pull``): only checkpoint files, size-limited,
  verified before anything is written.
* `revisions` — `resolve_hub_revision`, `hub_origin`, `HubOrigin`, `hub_errors` (failures become a `HubError`).

Names are loaded on first use, so that the core (which pushes through `push` and resolves through `revisions`) never
imports the loading side (`pull` builds on `AutoShineModel`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


_EXPORTS = {
    "HubError": "peft_shine.errors",
    "PullError": "peft_shine.errors",
    "HubOrigin": "peft_shine.storage.revisions",
    "hub_errors": "peft_shine.storage.revisions",
    "hub_origin": "peft_shine.storage.revisions",
    "resolve_hub_revision": "peft_shine.storage.revisions",
    "PushOptions": "peft_shine.hub.push",
    "push_adapter": "peft_shine.hub.push",
    "push_adapter_folder": "peft_shine.hub.push",
    "push_hypernetwork": "peft_shine.hub.push",
    "push_hypernetwork_folder": "peft_shine.hub.push",
    "download": "peft_shine.hub.pull",
    "pull_adapter": "peft_shine.hub.pull",
    "pull_hypernetwork": "peft_shine.hub.pull",
    "repo_kind": "peft_shine.hub.pull",
}

__all__ = [
    "HubError",
    "HubOrigin",
    "PullError",
    "PushOptions",
    "download",
    "hub_errors",
    "hub_origin",
    "pull_adapter",
    "pull_hypernetwork",
    "push_adapter",
    "push_adapter_folder",
    "push_hypernetwork",
    "push_hypernetwork_folder",
    "repo_kind",
    "resolve_hub_revision",
]

if TYPE_CHECKING:
    from peft_shine.errors import HubError, PullError
    from peft_shine.hub.pull import download, pull_adapter, pull_hypernetwork, repo_kind
    from peft_shine.hub.push import (
        PushOptions,
        push_adapter,
        push_adapter_folder,
        push_hypernetwork,
        push_hypernetwork_folder,
    )
    from peft_shine.storage.revisions import HubOrigin, hub_errors, hub_origin, resolve_hub_revision


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'peft_shine.hub' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
