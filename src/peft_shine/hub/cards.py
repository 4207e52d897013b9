"""Model cards for the Hub: a SHINE hypernetwork repo and a generated LoRA adapter repo, built on the card text of
the core (`peft_shine.adapters.card_text`: the templates, the local adapter card, links and vLLM ranks)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from peft_shine.adapters.card_text import (
    ADAPTER_TAGS,
    ADAPTER_TEMPLATE,
    hub_link,
    templates_dir,
    unique,
    vllm_max_lora_rank,
)
from peft_shine.adapters.contexts import context_sha256 as hash_context
from peft_shine.errors import ConfigError


HYPERNETWORK_TEMPLATE = "hypernetwork_card.md"
HYPERNETWORK_TAGS = ["shine", "hypernetwork", "lora", "peft", "text-generation"]
OWN_CONDITIONS = ("adapter",)  # the hypernetwork's own results; the baselines stay in the text table


def render_hypernetwork_card(
    *,
    repo_id: str,
    base_model: str,
    base_model_revision: str | None = None,
    license: str | None = "apache-2.0",  # noqa: A002 (the Hub's metadata key)
    datasets: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    lora_rank: int | None = None,
    target_modules: Sequence[str] | None = None,
    num_memory_slots: int | None = None,
    m2p_num_layers: int | None = None,
    training: Mapping[str, Any] | None = None,
    eval_results: Sequence[Mapping[str, Any]] | None = None,
    base_weights: str | None = None,
) -> ModelCard:
    """The card of a hypernetwork repo (``library_name: peft-shine``, ``base_model_relation: adapter``).

    Args:
        training: optional summary with any of ``stages`` (a list of stage names or of dicts with ``name`` and
            optional ``datasets``, ``steps``, ``description``), ``datasets``, ``steps`` and ``notes``.
        eval_results: optional rows with ``condition``, ``dataset``, ``f1``, ``em`` and ``n`` (plus optional
            ``dataset_id`` for the Hub dataset id and ``split``); the ``adapter`` rows (the hypernetwork's own
            results) also become ``model-index`` entries, the baselines stay in the text table.
        base_weights: how the base weights the hypernetwork was trained with were obtained, when they are not the
            Hub repo's own (e.g. de-quantised from a GGUF).
    """
    check_hub_model_id(base_model)
    summary = _training_summary(training)
    all_datasets = unique([*(datasets or []), *(summary["datasets"] if summary else [])])
    results = [dict(row) for row in eval_results or []]
    card_data = _card_data(base_model, "peft-shine", license, [*HYPERNETWORK_TAGS, *(tags or [])],
                           datasets=all_datasets or None, model_name=repo_id.split("/")[-1] if results else None,
                           eval_results=[item for row in results if row.get("condition") in OWN_CONDITIONS
                                         for item in _eval_results(row)] or None)
    return ModelCard.from_template(
        card_data,
        template_path=str(templates_dir() / HYPERNETWORK_TEMPLATE),
        repo_id=repo_id,
        base_model=base_model,
        base_model_revision=base_model_revision,
        license=license,
        datasets=all_datasets,
        lora_rank=lora_rank,
        target_modules=list(target_modules or []),
        num_memory_slots=num_memory_slots,
        m2p_num_layers=m2p_num_layers,
        training=summary,
        eval_results=[_formatted_row(row) for row in results],
        base_weights=base_weights,
    )


def hypernetwork_card_fields(config: Mapping[str, Any], model_card_fields: Mapping[str, Any] | None = None,
                             ) -> dict[str, Any]:
    """`render_hypernetwork_card` arguments from a hypernetwork's ``config.json`` mapping, updated with
    ``model_card_fields`` (license, datasets, tags, training, eval_results)."""
    return {
        "base_model": config.get("base_model_name_or_path"),
        "base_model_revision": config.get("base_model_revision"),
        "lora_rank": config.get("lora_rank"),
        "target_modules": config.get("target_modules"),
        "num_memory_slots": config.get("num_memory_slots"),
        "m2p_num_layers": config.get("m2p_num_layers"),
        **(model_card_fields or {}),
    }


def eval_rows(results: Mapping[str, Any], dataset: str, *, dataset_id: str | None = None,
              split: str | None = None) -> list[dict[str, Any]]:
    """Card ``eval_results`` rows (F1/EM ×100 per condition) from a `shine eval` ``results.json`` mapping."""
    return [{"condition": condition, "dataset": dataset, "dataset_id": dataset_id, "split": split,
             "f1": round(values["f1"], 2), "em": round(values["em"], 2), "n": values["n"]}
            for condition, values in results["aggregates"].items()]


def render_adapter_card(
    *,
    repo_id: str,
    base_model: str,
    hypernetwork_repo: str,
    base_model_revision: str | None = None,
    hypernetwork_revision: str | None = None,
    context_sha256: str | None = None,
    context: str | None = None,
    include_context: bool = False,
    generation_seconds: float | None = None,
    generated_at: str | None = None,
    lora_rank: int | None = None,
    target_modules: Sequence[str] | None = None,
    license: str | None = None,  # noqa: A002 (the Hub's metadata key)
    tags: Sequence[str] | None = None,
) -> ModelCard:
    """The card of a generated LoRA adapter repo, with peft's metadata plus the SHINE provenance.

    The context text goes into the card only with ``include_context=True``; otherwise only its SHA-256 does
    (computed from ``context`` when ``context_sha256`` is not given, and checked against it when both are).
    """
    check_hub_model_id(base_model)
    digest = _context_digest(context, context_sha256)
    card_data = _card_data(base_model, "peft", license,
                           [f"base_model:adapter:{base_model}", *ADAPTER_TAGS, *(tags or [])])
    return ModelCard.from_template(
        card_data,
        template_path=str(templates_dir() / ADAPTER_TEMPLATE),
        repo_id=repo_id,
        base_link=hub_link(base_model),
        hypernetwork_link=hub_link(hypernetwork_repo),
        base_model=base_model,
        base_model_revision=base_model_revision,
        hypernetwork_repo=hypernetwork_repo,
        hypernetwork_revision=hypernetwork_revision,
        context_sha256=digest,
        context=context if include_context else None,
        context_fence=_code_fence(context or ""),
        generation_seconds=None if generation_seconds is None else f"{generation_seconds:.2f}",
        generated_at=generated_at,
        lora_rank=lora_rank,
        target_modules=list(target_modules or []),
        vllm_max_lora_rank=vllm_max_lora_rank(lora_rank),
    )


def check_hub_model_id(base_model: str) -> None:
    """A card's ``base_model`` must be a Hub model id (``org/name``): a local path would publish a server path and
    link to nothing. Raise `ValueError` saying what to pass instead."""
    hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", base_model or "")
    if not hub_id or Path(base_model).expanduser().is_dir():
        raise ConfigError(f"The card's base_model must be a Hub model id like 'HuggingFaceTB/SmolLM2-135M-Instruct', "
                          f"not a local path ({base_model!r}): pass model_card_fields={{'base_model': '<org/name>'}} "
                          f"(on the command line: a 'base_model: <org/name>' line in the --card file of shine card / "
                          f"shine push hypernetwork; --base-model of shine push adapter), or record the Hub id in the "
                          f"config.")


def _card_data(base_model: str, library: str, license: str | None, tags: list[str],  # noqa: A002
               **extra: Any) -> ModelCardData:
    """The YAML metadata shared by both cards: an adapter of ``base_model`` for text generation."""
    return ModelCardData(base_model=base_model, base_model_relation="adapter", library_name=library,
                         pipeline_tag="text-generation", license=license, tags=unique(tags), **extra)


def _context_digest(context: str | None, given: str | None) -> str | None:
    """The context's hex SHA-256 (`peft_shine.adapters.contexts.context_sha256`), computed or checked against the given one."""
    if context is None:
        return given
    digest = hash_context(context)
    if given is not None and given.lower() != digest:
        raise ConfigError("context_sha256 does not match the SHA-256 of the given context")
    return digest


def _training_summary(training: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Normalise a training summary: stages as dicts with list-valued ``datasets``; missing keys as None/[]."""
    if not training:
        return None
    stages = [_stage(stage) for stage in training.get("stages") or []]
    datasets = unique([*_as_list(training.get("datasets")), *(d for stage in stages for d in stage["datasets"])])
    return {"stages": stages, "datasets": datasets, "steps": training.get("steps"), "notes": training.get("notes")}


def _stage(stage: str | Mapping[str, Any]) -> dict[str, Any]:
    """One training stage as a dict with ``name``, ``datasets`` (list), ``steps`` and ``description``."""
    if isinstance(stage, str):
        return {"name": stage, "datasets": [], "steps": None, "description": None}
    return {
        "name": stage.get("name", "stage"),
        "datasets": _as_list(stage.get("datasets") or stage.get("dataset")),
        "steps": stage.get("steps"),
        "description": stage.get("description"),
    }


HUB_METRIC_IDS = {"f1": "f1", "em": "exact_match"}  # our result keys -> the metric ids the Hub's model-index knows


def _eval_results(row: Mapping[str, Any]) -> list[EvalResult]:
    """The ``model-index`` entries (F1 and EM) of one evaluation row."""
    dataset = str(row["dataset"])
    return [
        EvalResult(
            task_type="question-answering",
            dataset_type=str(row.get("dataset_id") or dataset),
            dataset_name=dataset,
            dataset_split=row.get("split"),
            metric_type=HUB_METRIC_IDS[metric],
            metric_name=f"{metric.upper()} ({row['condition']})",
            metric_value=row[metric],
        )
        for metric in ("f1", "em")
        if row.get(metric) is not None
    ]


def _formatted_row(row: Mapping[str, Any]) -> dict[str, str]:
    """An evaluation row with display strings for the card's table."""
    return {key: _display(row.get(key)) for key in ("condition", "dataset", "f1", "em", "n")}


def _display(value: Any) -> str:
    """A table cell: floats with 2 decimals, missing values as a dash."""
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _code_fence(text: str) -> str:
    """A backtick fence longer than any backtick run inside ``text`` (at least three)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    """``None`` → [], a string → [string], a sequence → list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
