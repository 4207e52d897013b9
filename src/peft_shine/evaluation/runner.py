"""Executing planned tasks: make the adapters they need, answer in mixed-adapter batches, score, clean up.

Work is cut into *chunks*: one for the base-model conditions, then one per ``adapter_batch_size`` distinct
contexts for the SHINE adapters (generated together, shared by ``adapter``, ``wrong_context`` and
``adapter+context``), then likewise for the SFT adapters (trained one after the other). A chunk's adapters exist
only while its questions are answered; at most one chunk's adapters are loaded at a time and all are deleted
afterwards.

Within a chunk, each condition's tasks are sorted by prompt length (then by decoding budget: recall tasks share
one prompt and their budgets follow their contexts' lengths) and cut into batches of ``batch_size`` (rows of one
batch may carry different adapters: peft's ``adapter_names``; a batch decodes up to its largest budget). Chunks
and batches are formed from the **full** plan, so a resumed run recomputes exactly the batches an uninterrupted run
would have, and gets identical predictions; batches whose tasks are all done are skipped, and chunks with nothing
left to do create no adapter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from peft_shine.errors import ConfigError
from peft_shine.evaluation.conditions import (
    DEFAULT_RECALL_MAX_NEW_TOKENS,
    KNOWN_CONDITIONS,
    SFT,
    SHINE,
    Task,
    TaskKey,
    context_id,
)
from peft_shine.evaluation.metrics import score_generation, score_recall
from peft_shine.evaluation.sft import SFTConfig, train_sft_adapter
from peft_shine.prompting import BASE_ADAPTER, generate_answers


Row = dict[str, Any]
ADAPTER_PREFIX = "shine-eval"


@dataclass(frozen=True)
class RunOptions:
    """Batching, decoding and baseline settings of an evaluation run."""

    batch_size: int = 8
    adapter_batch_size: int = 8
    max_new_tokens: int = 32
    truncation: bool = False  # generate adapters from the first max_context_length tokens of longer contexts
    sft: SFTConfig = field(default_factory=SFTConfig)
    seed: int = 0  # initialisation of the SFT adapters
    recall_max_new_tokens: int = DEFAULT_RECALL_MAX_NEW_TOKENS  # cap on a recall task's budget
    chunking: Any = None  # a `peft_shine.ChunkingConfig`: SHINE adapters of long contexts made chunk-wise

    def __post_init__(self) -> None:
        if min(self.batch_size, self.adapter_batch_size, self.max_new_tokens, self.recall_max_new_tokens) < 1:
            raise ConfigError("batch_size, adapter_batch_size, max_new_tokens and recall_max_new_tokens must be >= 1")


@dataclass
class Chunk:
    """Tasks that share one set of adapters: their kind, the contexts to make them from, the answer batches."""

    kind: str | None
    contexts: list[str]
    batches: list[list[Task]]


def adapter_name(kind: str, context: str) -> str:
    """The peft adapter name of an evaluation adapter (valid for `adapter_names.validate_adapter_names`)."""
    return f"{ADAPTER_PREFIX}-{kind}-{context_id(context)[:16]}"


def _batches(tasks: Sequence[Task], batch_size: int) -> list[list[Task]]:
    by_condition: dict[str, list[Task]] = {}
    for task in tasks:
        by_condition.setdefault(task.condition, []).append(task)
    batches = []
    for group in by_condition.values():
        ordered = sorted(group, key=lambda t: (t.prompt_tokens, t.max_new_tokens or 0))  # stable: ties keep plan order
        batches += [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]
    return batches


def plan_chunks(tasks: Sequence[Task], options: RunOptions) -> list[Chunk]:
    """The chunks of a plan, in execution order: base model, SHINE adapters, SFT adapters."""
    chunks = [Chunk(None, [], _batches([t for t in tasks if t.adapter_kind is None], options.batch_size))]
    size = options.adapter_batch_size
    for kind in (SHINE, SFT):
        contexts = list(dict.fromkeys(t.adapter_context for t in tasks if t.adapter_kind == kind))
        for start in range(0, len(contexts), size):
            members = set(contexts[start:start + size])
            chunk_tasks = [t for t in tasks if t.adapter_kind == kind and t.adapter_context in members]
            chunks.append(Chunk(kind, contexts[start:start + size], _batches(chunk_tasks, options.batch_size)))
    return [chunk for chunk in chunks if chunk.batches]


def _make_adapters(shine, chunk: Chunk, options: RunOptions, scope: list[str],
                   status: Callable[[str], None]) -> dict[str, tuple[str, float]]:
    """Create the chunk's adapters; returns ``context -> (adapter name, seconds to make it)``."""
    names = [adapter_name(chunk.kind, context) for context in chunk.contexts]
    scope.extend(names)
    if chunk.kind == SHINE:
        status(f"generating {len(names)} SHINE adapter(s)")
        shine.generate_adapter(chunk.contexts, adapter_names=names, truncation=options.truncation,
                               batch_size=options.adapter_batch_size, chunking=options.chunking)
        seconds = [shine.adapter_info[name]["generation_seconds"] for name in names]
    else:
        status(f"training {len(names)} SFT adapter(s), {options.sft.steps} steps each")
        seconds = [train_sft_adapter(shine, c, n, options.sft, options.seed) for c, n in zip(chunk.contexts, names)]
    return {context: (name, s) for context, name, s in zip(chunk.contexts, names, seconds)}


def score(condition: str, generation: str, golds: Sequence[str], source: str) -> dict[str, Any]:
    """The scores of a raw generation: `score_recall` against the context for a recall condition (its only gold),
    else `score_generation` (answer extraction, then EM/F1)."""
    if KNOWN_CONDITIONS[condition].recall:
        return score_recall(generation, golds[0])
    return score_generation(generation, golds, source)


def rescored(row: Row) -> Row:
    """``row`` scored again from its raw generation (so an improved extractor also applies to stored rows)."""
    return {**row, **score(row["condition"], row["generation"], row["answers"], row["source"])}


def make_row(task: Task, generation: str, adapter_seconds: float | None, answer_seconds: float) -> Row:
    """The JSON record of one answered task: the prediction, its scores and its costs."""
    record = task.record
    return {
        "condition": task.condition, "id": record.id, "source": record.source, "title": record.title,
        "question": record.question, "answers": list(record.answers), "generation": generation,
        **score(task.condition, generation, record.answers, record.source),
        "context_sha256": context_id(record.context),
        "adapter_context_sha256": None if task.adapter_context is None else context_id(task.adapter_context),
        "adapter_seconds": adapter_seconds, "answer_seconds": answer_seconds, "prompt_tokens": task.prompt_tokens,
    }


def answer_batch(shine, batch: Sequence[Task], adapters: dict[str, tuple[str, float]], max_new_tokens: int) -> list[Row]:
    """Answer one batch greedily (one adapter per row), up to the largest budget of its tasks (``max_new_tokens``
    for tasks without their own), and return its scored rows."""
    model = shine.peft_model if shine.peft_model is not None else shine.base_lm
    names = None
    if shine.peft_model is not None:
        names = [BASE_ADAPTER if t.adapter_context is None else adapters[t.adapter_context][0] for t in batch]
    started = time.perf_counter()
    budget = max(t.max_new_tokens or max_new_tokens for t in batch)
    generations = generate_answers(model, shine.tokenizer, [t.prompt for t in batch], names, budget)
    seconds = (time.perf_counter() - started) / len(batch)
    return [make_row(t, text, None if t.adapter_context is None else adapters[t.adapter_context][1], seconds)
            for t, text in zip(batch, generations)]


def warm_up(shine, prompt: str) -> None:
    """One tiny generation, so one-off start-up costs are not charged to the first timed batch."""
    model = shine.peft_model if shine.peft_model is not None else shine.base_lm
    names = [BASE_ADAPTER] if shine.peft_model is not None else None
    generate_answers(model, shine.tokenizer, [prompt], names, max_new_tokens=1)


def execute_tasks(
    shine,
    tasks: Sequence[Task],
    options: RunOptions,
    done: Collection[TaskKey] = (),
    on_rows: Callable[[list[Row]], None] = lambda rows: None,
    on_status: Callable[[str], None] = lambda message: None,
) -> None:
    """Answer every task whose key is not in ``done``, calling ``on_rows`` with each batch's new rows as soon as
    the batch is answered. Adapters are created per chunk and always deleted afterwards."""
    warmed = False
    for chunk in plan_chunks(tasks, options):
        pending = [batch for batch in chunk.batches if any(t.key not in done for t in batch)]
        if not pending:
            continue
        if not warmed:
            warm_up(shine, pending[0][0].prompt)
            warmed = True
        with shine.adapter_scope() as scope:
            adapters = _make_adapters(shine, chunk, options, scope, on_status) if chunk.kind else {}
            on_status(f"answering ({chunk.kind or 'base model'})")
            for batch in pending:
                rows = answer_batch(shine, batch, adapters, options.max_new_tokens)
                on_rows([row for row, task in zip(rows, batch) if task.key not in done])
