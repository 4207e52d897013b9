"""Our model card in every generated adapter folder, and saves that never touch the network.

Both ways of saving a generated adapter write a README.md card (context hash, hypernetwork, base, chunks, how to
load it with plain peft, offline included): `ShineModel.save_adapter` passes `card_files` to the folder writer, and
`attach_card_writer` gives the shared `PeftModel` a ``save_pretrained`` that calls peft's own and then writes the
cards (peft's blank "More Information Needed" card is not written).

The same ``save_pretrained`` passes ``save_embedding_layers=False`` unless told otherwise: generated adapters never
target the embeddings, and peft's ``"auto"`` asks the Hub whether the recorded base has a ``config.json``, which
offline prints "Unable to fetch remote file" after waiting on the network.

Whether a README.md already in the folder is replaced follows one rule, `storage.save_targets.card_is_ours`: only
our card as written (its sha256 is recorded in the adapter's marker) or one identical to the new card; a user's
own or an edited card is kept. ``save_pretrained`` also writes that marker into the weights peft wrote
(`storage.save_targets.mark_adapter_folder`), so both ways leave the same folder.
"""

from __future__ import annotations

import types
import weakref
from pathlib import Path
from typing import Any

from peft import PeftModel

from peft_shine.adapters.card_text import render_folder_adapter_card
from peft_shine.storage.base_models import DEFAULT_BASE_MODEL, embedded_base_path
from peft_shine.storage.io_utils import atomic_write_text
from peft_shine.storage.save_targets import card_is_ours, mark_adapter_folder


CARD_NAME = "README.md"
_OWNERS = "_peft_shine_card_owners"  # on the PeftModel: the ShineModels whose adapters it holds (weak)


def adapter_card(shine: Any, adapter_name: str, folder: str | Path) -> str:
    """The card of ``shine``'s generated adapter ``adapter_name``, saved in ``folder``."""
    info = shine.adapter_info.get(adapter_name, {})
    config = shine.peft_model.peft_config[adapter_name]
    hypernetwork = str(getattr(shine, "name_or_path", "") or "")
    if hypernetwork and Path(hypernetwork).expanduser().is_dir():
        hypernetwork = Path(hypernetwork).name  # a local folder: its name, not this machine's path
    base = shine.config.base_model_name_or_path
    embedded = base == DEFAULT_BASE_MODEL and (embedded_base_path() / "config.json").is_file()
    return render_folder_adapter_card(
        folder=folder, base_model=base, hypernetwork=hypernetwork or None,
        context_sha256=info.get("context_sha256"), generation_seconds=info.get("generation_seconds"),
        chunk_tokens=info.get("chunk_tokens"), lora_rank=config.r, target_modules=sorted(config.target_modules),
        embedded_base=embedded)


def card_files(shine: Any, adapter_name: str, folder: str | Path) -> dict[str, str]:
    """``{"README.md": card}`` for the folder writer (which keeps a README.md that is not ours and unchanged)."""
    return {CARD_NAME: adapter_card(shine, adapter_name, folder)}


def attach_card_writer(shine: Any, peft_model: PeftModel) -> PeftModel:
    """Make ``peft_model.save_pretrained`` write our cards (for the adapters of ``shine`` and of every other
    hypernetwork sharing the base) and skip peft's Hub lookup; returns ``peft_model``."""
    owners = peft_model.__dict__.get(_OWNERS)
    if owners is None:
        owners = weakref.WeakSet()
        peft_model.__dict__[_OWNERS] = owners
        peft_model.__dict__["save_pretrained"] = types.MethodType(_save_pretrained_with_cards, peft_model)
    owners.add(shine)
    return peft_model


def _save_pretrained_with_cards(self: PeftModel, save_directory: str, selected_adapters: list[str] | None = None,
                                save_embedding_layers: bool | str = False, is_main_process: bool = True,
                                **kwargs: Any) -> None:
    """peft's ``save_pretrained`` without peft's card and Hub lookup, then our card in each adapter's folder."""
    names = list(selected_adapters or self.peft_config)
    owners = list(self.__dict__.get(_OWNERS, ()))
    cards = {}  # name -> (folder, card, whether the README.md there may be replaced), decided before peft writes
    for name in names if is_main_process else []:
        owner = next((shine for shine in owners if name in shine.adapter_info), None)
        folder = Path(save_directory) if name == "default" else Path(save_directory) / name
        if owner is not None:
            card = adapter_card(owner, name, folder)
            cards[name] = (folder, card, card_is_ours(folder, card))  # the marker read before peft replaces it
    if "default" in names:  # our card goes where peft would write its own
        self.__dict__["create_or_update_model_card"] = lambda output_dir: None
    try:
        PeftModel.save_pretrained(self, save_directory, selected_adapters=selected_adapters,
                                  save_embedding_layers=save_embedding_layers, is_main_process=is_main_process,
                                  **kwargs)
    finally:
        self.__dict__.pop("create_or_update_model_card", None)
    if not is_main_process:
        return
    for folder, card, replace in cards.values():
        if replace:
            atomic_write_text(folder / CARD_NAME, card)
        mark_adapter_folder(folder, card)
    if "default" in names and "default" not in cards:  # not generated by peft-shine: peft's card, as peft writes it
        PeftModel.create_or_update_model_card(self, str(save_directory))
