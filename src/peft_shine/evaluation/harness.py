"""`run_evaluation`: every condition on the same questions and base model, resumable, with a JSON/markdown/PNG
report (docs/evaluation.md).

Files in ``output_dir``:

* ``settings.json`` — what the predictions depend on (base model, decoding, SFT, seed, and the hypernetwork weights
  hash; the recall decoding once a run has recall conditions); a resumed run must match it, except for the
  hypernetwork: rows of the base-model and SFT conditions do not depend on it and are reused, while SHINE rows (each
  stamped with its hypernetwork's hash) of other weights are recomputed. So baselines answered once serve every
  later checkpoint evaluated into the same folder. Optional settings (`OPTIONAL_SETTINGS`) are compared only when
  both runs have them, so recall conditions can be added to a folder of QA results and QA-only runs resume it;
* ``predictions.jsonl`` — one line per answered (condition, question), appended as batches complete;
* ``results.json``, ``results.md``, ``results.png`` — the final report, written atomically at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from peft_shine.adapters.pipeline import resolve_chunking
from peft_shine.errors import ConfigError, DataError
from peft_shine.evaluation.conditions import (
    DEFAULT_CONDITIONS,
    DEFAULT_RECALL_MAX_NEW_TOKENS,
    KNOWN_CONDITIONS,
    RECALL_MARGIN,
    SHINE,
    distinct_contexts,
    plan_tasks,
    recall_instruction,
    resolve_conditions,
)
from peft_shine.evaluation.metrics import aggregate
from peft_shine.evaluation.report import write_reports
from peft_shine.evaluation.runner import Row, RunOptions, execute_tasks, rescored
from peft_shine.evaluation.sft import SFTConfig
from peft_shine.evaluation.store import PredictionLog
from peft_shine.prompting import ANSWER_SYSTEM_PROMPT, IN_CONTEXT_TEMPLATE
from peft_shine.qa_data import QARecord
from peft_shine.storage.io_utils import atomic_write_text


SETTINGS_FILE = "settings.json"
PREDICTIONS_FILE = "predictions.jsonl"
RESULTS_FORMAT = 1
HYPERNETWORK_KEY = "hypernetwork_sha256"
OPTIONAL_SETTINGS = ("recall",)  # recorded by runs that use them; checked only when both runs have them


def hypernetwork_fingerprint(shine) -> str:
    """sha256 of the hypernetwork's parameter names and bytes (identifies the weights a run used)."""
    digest = hashlib.sha256()
    for name, param in shine.named_parameters():
        if name.startswith("base_lm."):
            continue
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_settings(shine, options: RunOptions, recall: bool = False) -> dict[str, Any]:
    """The settings that determine the predictions (checked when resuming); ``recall`` adds the recall decoding."""
    recall_settings = {"recall": {"instruction": recall_instruction(), "margin": RECALL_MARGIN,
                                  "max_new_tokens": options.recall_max_new_tokens}} if recall else {}
    return {
        "format": RESULTS_FORMAT,
        "base_model": shine.config.base_model_name_or_path,
        "base_model_revision": shine.config.base_model_revision,
        HYPERNETWORK_KEY: hypernetwork_fingerprint(shine),
        "lora_rank": shine.config.lora_rank,
        "in_context_template": IN_CONTEXT_TEMPLATE,
        "system_prompt": ANSWER_SYSTEM_PROMPT,
        "max_new_tokens": options.max_new_tokens,
        "truncation": options.truncation,
        "seed": options.seed,
        "sft": {"steps": options.sft.steps, "learning_rate": options.sft.learning_rate,
                "weight_decay": options.sft.weight_decay},
        **recall_settings,
        **({"chunking": dataclasses.asdict(options.chunking)} if options.chunking is not None else {}),
    }


def _check_settings(output_dir: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``settings.json`` for a new run; for a resumed one, refuse different settings (another hypernetwork
    is allowed: `_reusable_keys` then keeps only the rows that do not depend on it; an optional setting only one
    of the runs has is kept). Returns the settings now recorded."""
    path = output_dir / SETTINGS_FILE
    if not path.exists():
        if (output_dir / PREDICTIONS_FILE).exists():
            raise ConfigError(f"{output_dir} holds predictions but no {SETTINGS_FILE}; use an empty output folder")
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")
        return dict(settings)
    recorded = json.loads(path.read_text(encoding="utf-8"))
    merged = {**{key: recorded[key] for key in OPTIONAL_SETTINGS if key in recorded}, **settings}
    compared = (set(recorded) | (set(merged) - set(OPTIONAL_SETTINGS))) - {HYPERNETWORK_KEY}  # new optional: added
    changed = sorted(key for key in compared if recorded.get(key) != merged.get(key))
    if changed:
        details = "; ".join(f"{key}: {recorded.get(key)!r} then, {merged.get(key)!r} now" for key in changed)
        raise ConfigError(f"{output_dir} holds results of a run with other settings ({details}); resume with the "
                          f"same settings or choose another output folder")
    if merged != recorded:
        atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    return merged


def _uses_hypernetwork(row: Row) -> bool:
    """Whether a row's answer depends on the hypernetwork's weights (it was answered with a SHINE adapter)."""
    return KNOWN_CONDITIONS[row["condition"]].adapter == SHINE


def _reusable_keys(log: PredictionLog, hypernetwork_sha256: str) -> set:
    """Keys of recorded rows valid for this hypernetwork: every non-SHINE row, and SHINE rows made by it."""
    return {key for key, row in log.rows.items()
            if not _uses_hypernetwork(row) or row.get(HYPERNETWORK_KEY) == hypernetwork_sha256}


def summarize(rows: Sequence[Row]) -> dict[str, Any]:
    """Aggregates of one condition: EM/F1 (and ROUGE-L for recall) ×100, mean answer seconds and prompt tokens per
    question, and the mean seconds to make an adapter, over the distinct adapters used (``None`` without adapters)."""
    adapters = {row["adapter_context_sha256"]: row["adapter_seconds"] for row in rows
                if row["adapter_context_sha256"] is not None}
    n = len(rows)
    return {
        **aggregate(rows),
        "answer_seconds": sum(row["answer_seconds"] for row in rows) / n,
        "prompt_tokens": sum(row["prompt_tokens"] for row in rows) / n,
        "num_adapters": len(adapters),
        "adapter_seconds": sum(adapters.values()) / len(adapters) if adapters else None,
    }


def run_evaluation(
    shine,
    records: Sequence[QARecord],
    conditions: str | Iterable[str] = DEFAULT_CONDITIONS,
    output_dir: str | Path = "eval-results",
    *,
    batch_size: int = 8,
    adapter_batch_size: int = 8,
    max_new_tokens: int = 32,
    recall_max_new_tokens: int = DEFAULT_RECALL_MAX_NEW_TOKENS,
    sft: SFTConfig | None = None,
    seed: int = 0,
    truncation: bool = False,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
    chunking: Any = None,
) -> dict[str, Any]:
    """Answer ``records`` under each condition (see `conditions.CONDITIONS`) and write the report.

    Greedy and deterministic. A run interrupted at any point resumes from ``output_dir``: finished (condition,
    question) pairs are read back from ``predictions.jsonl`` and not recomputed, and the final numbers equal those of
    an uninterrupted run. Adapters made for the evaluation are deleted from ``shine.peft_model`` afterwards.

    Args:
        shine: a `ShineModel` with its base LM and tokenizer attached.
        records: the questions (e.g. from `load_qa_records`, optionally `group_contexts`); ids must be unique.
        conditions: condition names, in report order (or a comma-separated string; ``"all"``, ``"recall"``).
        output_dir: folder for settings, the resumable prediction log and the report.
        batch_size: questions per generation batch.
        adapter_batch_size: contexts per adapter-generation batch, and the most adapters loaded at once.
        max_new_tokens: greedy decoding budget per answer.
        recall_max_new_tokens: cap on a recall task's budget (its context's token count + `RECALL_MARGIN`).
        sft: training of the ``sft`` baseline (default `SFTConfig()`).
        seed: seed of the ``wrong_context`` derangement and of the SFT initialisation.
        truncation: generate adapters from the first ``max_context_length`` tokens of longer contexts (else raise).
        progress: show a tqdm progress bar.
        metadata: extra JSON-ready facts to record in the report (data set, limit, hypernetwork path, ...).
        chunking: make SHINE adapters of long contexts chunk-wise (a `ChunkingConfig`, see
            `peft_shine.adapters.pipeline`; recorded in the settings). Not with ``truncation``.

    Returns:
        ``{"settings", "metadata", "conditions", "aggregates": {condition: {...}}, "predictions": [row, ...]}``,
        also written to ``results.json`` (with ``results.md`` and ``results.png``).
    """
    if not records:
        raise DataError("no records to evaluate")
    names = resolve_conditions(conditions)
    specs = [KNOWN_CONDITIONS[name] for name in names]
    if chunking is not None:
        chunking = resolve_chunking(shine, chunking)  # refuse bad chunking now, not after the first conditions
    options = RunOptions(batch_size, adapter_batch_size, max_new_tokens, truncation, sft or SFTConfig(), seed,
                         recall_max_new_tokens, chunking=chunking)
    tasks = plan_tasks(records, names, shine.tokenizer, seed, recall_max_new_tokens)
    if not truncation and chunking is None and any(spec.adapter == SHINE for spec in specs):
        shine.tokenize_contexts(distinct_contexts(records))  # raise now, not after the first conditions
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    settings = _check_settings(output_dir, run_settings(shine, options, any(spec.recall for spec in specs)))
    log = PredictionLog(output_dir / PREDICTIONS_FILE)
    _answer_missing(shine, tasks, options, log, settings[HYPERNETWORK_KEY], progress)
    rows = [rescored(log.rows[task.key]) for task in tasks]  # scores always from the current extractor
    results = {
        "settings": settings,
        "metadata": {**(metadata or {}), "num_questions": len(records),
                     "num_contexts": len(distinct_contexts(records))},
        "conditions": {name: KNOWN_CONDITIONS[name].description for name in names},
        "aggregates": {name: summarize([r for r in rows if r["condition"] == name]) for name in names},
        "predictions": rows,
    }
    write_reports(results, output_dir)
    return results


def _answer_missing(shine, tasks: list, options: RunOptions, log: PredictionLog, hypernetwork: str,
                    progress: bool) -> None:
    """Run every task not yet in ``log`` (a resumed run skips the finished ones), appending rows as they come."""
    done = _reusable_keys(log, hypernetwork)
    with tqdm(total=len(tasks), initial=sum(t.key in done for t in tasks), desc="shine eval", unit="q",
              disable=not progress) as bar:
        def record(rows: list[Row]) -> None:
            for row in filter(_uses_hypernetwork, rows):
                row[HYPERNETWORK_KEY] = hypernetwork
            log.append(rows)
            bar.update(len(rows))

        execute_tasks(shine, tasks, options, done, on_rows=record, on_status=bar.set_postfix_str)
