"""Sharing SHINE hypernetworks and generated adapters on the Hugging Face Hub.

* `push` — `push_hypernetwork`, `push_hypernetwork_folder`, `push_adapter`, `push_adapter_folder`: one atomic commit
  each, with a SHINE model card rendered by `cards` (templates shipped as package data in ``templates/``).
* `pull` — `pull_hypernetwork`, `pull_adapter`, `download` (``shine pull``): only checkpoint files, size-limited,
  verified before anything is written.
* `resolve_hub_revision`, `hub_origin`, `HubOrigin`, `hub_errors` (failures become a `HubError`): re-exported from
  the core's `peft_shine.storage.revisions`, since loading pins a Hub revision too.

`hub/` builds on the core and the core never imports it at module level: `ShineModel.push_to_hub` imports `push`
when it is called.
"""

from __future__ import annotations

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
