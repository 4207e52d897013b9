"""The text of our model cards: the Jinja templates (package data in ``assets/cards/``; the repository's top-level
``hub_cards/`` links to them), the card of a local adapter folder, and the small pieces the Hub cards
(`peft_shine.hub.cards`) build on. Rendered with ``huggingface_hub.ModelCard.from_template``, which fills the YAML
front matter from a ``ModelCardData``; nothing here touches the network."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData


ADAPTER_TEMPLATE = "adapter_card.md"
ADAPTER_TAGS = ["lora", "peft", "shine"]
ADAPTER_CARD_MARKER = "<!-- peft-shine adapter card -->"  # in every adapter card we render (local or Hub)
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "assets" / "cards"


def templates_dir() -> Path:
    """The folder holding the card templates (package data; the repository's ``hub_cards/`` links to them)."""
    return TEMPLATES_DIR


def render_folder_adapter_card(
    *,
    folder: str | Path,
    base_model: str,
    hypernetwork: str | None,
    context_sha256: str | None = None,
    generation_seconds: float | None = None,
    chunk_tokens: Sequence[int] | None = None,
    lora_rank: int | None = None,
    target_modules: Sequence[str] | None = None,
    embedded_base: bool = False,
) -> str:
    """The card written into a local adapter folder by `ShineModel.save_adapter` and the returned `PeftModel`'s
    ``save_pretrained``: the same provenance and usage as a Hub adapter card, loading from the folder (by its name,
    relative to where it lies: the card never records this machine's paths).

    ``base_model`` and ``hypernetwork`` are linked on the Hub only when they are Hub ids (a local folder is named,
    not linked; ``hypernetwork=None`` is an untrained hypernetwork); ``embedded_base`` adds how to load the
    embedded base offline. `shine push adapter` replaces this card with the Hub one.
    """
    hub_base = is_hub_id(base_model)
    tags = [*ADAPTER_TAGS, *([f"base_model:adapter:{base_model}"] if hub_base else [])]
    card_data = ModelCardData(base_model=base_model if hub_base else None, library_name="peft",
                              pipeline_tag="text-generation", tags=unique(tags))
    name = hypernetwork or "`untrained` (randomly initialised: the adapter carries nothing of its context)"
    card = ModelCard.from_template(
        card_data,
        template_path=str(templates_dir() / ADAPTER_TEMPLATE),
        repo_id=Path(folder).name,
        load_path=Path(folder).name,  # where the folder is, never this machine's path (the demo serves the card)
        base_link=hub_link(base_model),
        hypernetwork_link=hub_link(name) if hypernetwork else name,
        base_model=base_model,
        context_sha256=context_sha256,
        generation_seconds=None if generation_seconds is None else f"{generation_seconds:.2f}",
        chunk_tokens=list(chunk_tokens or []),
        lora_rank=lora_rank,
        target_modules=list(target_modules or []),
        vllm_max_lora_rank=vllm_max_lora_rank(lora_rank),
        embedded_base=embedded_base,
    )
    return str(card)


def is_adapter_card(text: str) -> bool:
    """Whether ``text`` (a README.md) is an adapter card peft-shine rendered (whether a save may replace one is
    `peft_shine.storage.save_targets.card_is_ours`)."""
    return ADAPTER_CARD_MARKER in text


def is_hub_id(name: str) -> bool:
    """Whether ``name`` looks like a Hub repo id (``org/name``) and is not a local path."""
    hub_like = re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name or "")
    return bool(hub_like) and not Path(name).expanduser().exists()


def hub_link(name: str) -> str:
    """Markdown for a model name: a link to its Hub page for a Hub id, the name alone otherwise."""
    return f"[`{name}`](https://huggingface.co/{name})" if is_hub_id(name) else f"`{name}`"


def vllm_max_lora_rank(rank: int | None) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that fits ``rank`` (16 when unknown)."""
    if rank is None:
        return 16
    return next((value for value in VLLM_LORA_RANKS if value >= rank), rank)


def unique(items: Sequence[str]) -> list[str]:
    """The items without duplicates, first occurrence order."""
    return list(dict.fromkeys(items))
