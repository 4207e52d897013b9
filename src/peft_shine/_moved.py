"""Module paths from before the core moved into folders keep importing: ``import peft_shine.adapter_store`` gives
the module `peft_shine.adapters.store` itself (the same object, so patching either name patches both), with a
``FutureWarning`` naming the new path, once per process and old path. The package itself imports only the new paths
(`tests/test_house.py` checks it)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType


MOVED_MODULES = {
    "peft_shine.adapter_composition": "peft_shine.adapters.compose",
    "peft_shine.adapter_names": "peft_shine.adapters.names",
    "peft_shine.adapter_store": "peft_shine.adapters.store",
    "peft_shine.base_models": "peft_shine.storage.base_models",
    "peft_shine.checkpoints": "peft_shine.storage.checkpoints",
    "peft_shine.chunking": "peft_shine.adapters.chunking",
    "peft_shine.composition": "peft_shine.adapters.combine",
    "peft_shine.config_bounds": "peft_shine.hypernetwork.config_bounds",
    "peft_shine.configuration_shine": "peft_shine.hypernetwork.configuration_shine",
    "peft_shine.contexts": "peft_shine.adapters.contexts",
    "peft_shine.document_adapters": "peft_shine.adapters.pipeline",
    "peft_shine.export": "peft_shine.adapters.export",
    "peft_shine.hub.revisions": "peft_shine.storage.revisions",
    "peft_shine.io_utils": "peft_shine.storage.io_utils",
    "peft_shine.layout": "peft_shine.hypernetwork.layout",
    "peft_shine.lora_binding": "peft_shine.hypernetwork.lora_binding",
    "peft_shine.losses": "peft_shine.hypernetwork.losses",
    "peft_shine.m2p": "peft_shine.hypernetwork.m2p",
    "peft_shine.memory": "peft_shine.adapters.memory",
    "peft_shine.save_targets": "peft_shine.storage.save_targets",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        """A spec for an old path, ``None`` for every other name (the ordinary finders handle it)."""
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def exec_module(self, module: ModuleType) -> None:
        """Put the module at the new path in ``sys.modules`` under the old name (the import system then returns it
        instead of the empty placeholder it created), warning once that the path moved."""
        new = MOVED_MODULES[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; import {new} instead (the old path will be removed in a "
                      f"future release)", FutureWarning, stacklevel=2)
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    """Add the finder once per process."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
