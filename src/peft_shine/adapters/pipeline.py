"""The one adapter pipeline: contexts → encoder rows with owners → passes → one LoRA per context → peft adapters.

`ShineModel.generate_adapter` (`peft_shine.adapters.generation`) runs `generate` under the generation lock. Every
context takes the same path, whether it fits the window or is read in chunks (``chunking=``):

1. **plan** (`plan_generation`): each context becomes the encoder rows it owns: its token ids, checked against
   ``max_context_length`` (`contexts.context_token_ids`), or its chunks (`chunking.chunk_document`: paragraph, then
   sentence, then word boundaries; each chunk a slice of the document's ids). The rows are grouped into encoder
   passes: whole contexts by length (`contexts.plan_batches`), chunks in document order, `chunks_per_pass` at a
   time; a pass holds at most `contexts.MAX_BATCH_TOKENS` positions either way;
2. **encode** (`encode_plan`): each pass is left-padded (`contexts.left_pad`) and encoded by
   `ShineModel.generate_lora`; each row's LoRA is exported at once (`export.peft_state_dict`) and handed to its
   owner's reducer, so working memory is bounded by one pass, not by the document (a progress bar counts chunks);
3. **reduce per owner**: a context of one row keeps its LoRA as it is (`KeepOne`: the one-chunk case, so a
   one-chunk document gives exactly the unchunked adapter); several chunks go into a `combine.LoraAccumulator`:
   ``"cat"`` (the exact sum of the chunk updates, rank ``chunks × r``) and ``"mean"`` (their exact mean) write into
   factors allocated once, which become the adapter's own tensors; ``"svd"`` (the sum truncated to ``rank``)
   re-truncates after every pass, holding at most ``rank`` + one pass of chunk ranks;
4. **add** (`add_generated`): only when every context is reduced, the adapters go onto the base's shared
   `PeftModel` (`store.add_adapters`: no copy), each with its own rank (``lora_alpha = r``: scaling 1), the last
   one active; all or nothing (a failure removes every adapter of the call);
5. **record** (`adapter_records`): one `adapter_info` entry per adapter, in one shape.

Nothing here writes the model's attributes: `generate` returns the `PeftModel` and the records, and
`generate_adapter` stores them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from peft_shine.adapters.chunking import (
    MAX_DOCUMENT_TOKENS,
    ChunkingError,
    TextChunk,
    check_chunk_sizes,
    chunk_document,
)
from peft_shine.adapters.combine import CombinedLora, LoraAccumulator, check_rule
from peft_shine.adapters.contexts import (
    DEFAULT_BATCH_SIZE,
    MAX_BATCH_TOKENS,
    context_sha256,
    context_token_ids,
    left_pad,
    pad_token_id,
    plan_batches,
)
from peft_shine.adapters.export import peft_state_dict
from peft_shine.adapters.store import add_adapters, discard_adapters, evaluation_mode
from peft_shine.errors import ModelStateError


@dataclass(frozen=True)
class ChunkingConfig:
    """How `generate_adapter` reads documents longer than one window.

    Attributes:
        chunk_tokens: tokens per chunk; default (``None``) the hypernetwork's ``max_context_length`` (less when the
            base has fewer positions than that plus the memory slots). At least the
            number of memory slots (each chunk is summarised into them), at most ``max_context_length``.
        overlap_tokens: tokens of the previous chunk's end repeated at the start of the next (0 to half a chunk).
        combine: ``"mean"`` (default: the mean of the chunk updates), ``"cat"`` (their sum) or ``"svd"`` (the
            sum truncated to ``rank``); ``"mean"`` and ``"cat"`` keep every chunk's rank. With the shipped
            hypernetwork the sum garbles answers from two chunks on (docs/evaluation.md), the mean does not.
        rank: the rank budget of ``"svd"`` (at most ``chunks × lora_rank`` of each document).
        max_document_tokens: the longest document read, in tokens (default `chunking.MAX_DOCUMENT_TOKENS`);
            a longer one raises `ChunkingError` before any encoding. Raise it for longer documents.
    """

    chunk_tokens: int | None = None
    overlap_tokens: int = 0
    combine: str = "mean"
    rank: int | None = None
    max_document_tokens: int = MAX_DOCUMENT_TOKENS


def wants_chunking(value: object) -> bool:
    """Whether a ``chunking=`` argument asks for chunking: anything but ``None`` / ``False`` (``0`` is a chunk size,
    refused by `resolve_chunking`, not "no chunking")."""
    return value is not None and value is not False


def as_chunking_config(value: ChunkingConfig | Mapping | bool | int) -> ChunkingConfig:
    """Accept a `ChunkingConfig`, a dict of its fields, ``True`` (defaults) or an int (``chunk_tokens``)."""
    if isinstance(value, ChunkingConfig):
        return value
    if value is True:
        return ChunkingConfig()
    if isinstance(value, int) and not isinstance(value, bool):
        return ChunkingConfig(chunk_tokens=value)
    if isinstance(value, Mapping):
        unknown = set(value) - {"chunk_tokens", "overlap_tokens", "combine", "rank", "max_document_tokens"}
        if unknown:
            raise ChunkingError(f"Unknown chunking options {sorted(unknown)}; known: chunk_tokens, overlap_tokens, "
                                f"combine, rank, max_document_tokens.")
        return ChunkingConfig(**value)
    raise ChunkingError(f"chunking must be a ChunkingConfig, a dict, True or a chunk size, got {value!r}.")


def resolve_chunking(shine, value: ChunkingConfig | Mapping | bool | int) -> ChunkingConfig:
    """The chunking config with its defaults filled in, checked against the hypernetwork and its base."""
    config = as_chunking_config(value)
    window, slots = shine.config.max_context_length, shine.config.num_memory_slots
    positions = getattr(shine.base_lm.config.get_text_config(), "max_position_embeddings", None)
    if config.chunk_tokens is None:
        config = replace(config, chunk_tokens=window if positions is None else min(window, positions - slots))
    check_chunk_sizes(config.chunk_tokens, config.overlap_tokens)
    limit = config.max_document_tokens
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ChunkingError(f"max_document_tokens must be a positive number of tokens, got {limit!r}.")
    if config.chunk_tokens > window:
        raise ChunkingError(f"chunk_tokens={config.chunk_tokens} is longer than this hypernetwork's "
                            f"max_context_length ({window}), the longest context it reads at once.")
    if config.chunk_tokens < slots:
        raise ChunkingError(f"chunk_tokens={config.chunk_tokens} is smaller than the {slots} memory slots each chunk "
                            f"is summarised into; use chunks of at least {slots} tokens.")
    if positions is not None and config.chunk_tokens + slots > positions:
        raise ChunkingError(f"chunk_tokens={config.chunk_tokens} plus {slots} memory slots exceeds the base "
                            f"model's {positions} positions; use chunk_tokens <= {positions - slots}.")
    check_rule(config.combine, config.rank)
    return config


def plan_documents(shine, texts: Sequence[str], config: ChunkingConfig) -> list[list[TextChunk]]:
    """Chunk every document and check the rank budget against each one's concatenated rank (before any work)."""
    plans = [chunk_document(shine.tokenizer, text, config.chunk_tokens, config.overlap_tokens,
                            config.max_document_tokens, index) for index, text in enumerate(texts)]
    for index, plan in enumerate(plans):
        try:
            check_rule(config.combine, config.rank, len(plan) * shine.config.exported_rank)
        except ValueError as error:
            raise type(error)(f"Document {index} ({len(plan)} chunks): {error}") from None
    return plans


def chunks_per_pass(shine, config: ChunkingConfig, batch_size: int | None) -> int:
    """At most ``batch_size`` chunks per encoder pass and at most `contexts.MAX_BATCH_TOKENS` positions (chunk +
    memory slots per row), as for unchunked contexts; at least one chunk. ``None``: one chunk per pass on a CPU
    (faster there on one or two threads, and one chunk's working tensors instead of several:
    ``benchmarks/bench_long_context.py``), `contexts.DEFAULT_BATCH_SIZE` on an accelerator."""
    if batch_size is None:
        batch_size = 1 if shine.memory_slots.device.type == "cpu" else DEFAULT_BATCH_SIZE
    width = config.chunk_tokens + shine.config.num_memory_slots
    return max(1, min(batch_size, MAX_BATCH_TOKENS // width))


@dataclass(frozen=True)
class GenerationPlan:
    """The encoder rows of one `generate` call: each row's token ids and owner (the index of its context), the rows
    of each encoder pass, and how each owner's rows are reduced (``chunking=None``: one row per context, kept)."""

    rows: list[list[int]]
    owners: list[int]
    passes: list[list[int]]
    chunking: ChunkingConfig | None = None
    row_tokens: list[list[int]] = field(init=False)  # per owner: the token count of each of its rows, in order

    def __post_init__(self) -> None:
        tokens: list[list[int]] = [[] for _ in range(max(self.owners) + 1)]
        for ids, owner in zip(self.rows, self.owners):
            tokens[owner].append(len(ids))
        object.__setattr__(self, "row_tokens", tokens)


def plan_generation(shine, texts: Sequence[str], *, truncation: bool = False, batch_size: int | None = None,
                    chunking: ChunkingConfig | Mapping | bool | int | None = None) -> GenerationPlan:
    """Tokenize every context once (or chunk it) and plan the encoder passes; raises before any encoding."""
    if shine.tokenizer is None:
        raise ModelStateError("No tokenizer attached: pass tokenizer= to from_pretrained / attach_base_model.")
    if not wants_chunking(chunking):
        rows = context_token_ids(shine.tokenizer, list(texts), shine.config.max_context_length, truncation)
        passes = plan_batches([len(ids) for ids in rows], batch_size or DEFAULT_BATCH_SIZE,
                              shine.config.num_memory_slots)
        return GenerationPlan(rows, list(range(len(rows))), passes)
    config = resolve_chunking(shine, chunking)
    documents = plan_documents(shine, texts, config)
    rows = [list(chunk.token_ids) for plan in documents for chunk in plan]
    owners = [owner for owner, plan in enumerate(documents) for _ in plan]
    step = chunks_per_pass(shine, config, batch_size)
    passes = [list(range(start, min(start + step, len(rows)))) for start in range(0, len(rows), step)]
    return GenerationPlan(rows, owners, passes, config)


class KeepOne:
    """The reducer of a context encoded as one row: its LoRA as it is (the one-chunk case of chunking)."""

    def __init__(self, rank: int, rule: str | None) -> None:
        self.rank, self.rule, self.count, self.state = rank, rule, 0, None

    def add(self, state: dict[str, torch.Tensor]) -> None:
        """Take the row's peft state dict."""
        self.state, self.count = state, self.count + 1

    def compress(self) -> None:
        """Nothing to compress."""

    def result(self) -> CombinedLora:
        """The row's LoRA."""
        return CombinedLora(self.state, self.rank, self.rule or "none")


def reducer(plan: GenerationPlan, owner: int, rank: int) -> KeepOne | LoraAccumulator:
    """How ``owner``'s rows become one LoRA: kept as they are when there is one (``"svd"`` aside, which may truncate
    even one chunk), else accumulated by the chunking rule."""
    config, count = plan.chunking, len(plan.row_tokens[owner])
    if config is None or (count == 1 and config.combine != "svd"):
        return KeepOne(rank, config.combine if config is not None else None)
    return LoraAccumulator([rank] * count, config.combine, rank=config.rank)


@torch.no_grad()  # not inference_mode: the tensors become peft parameters
def encode_plan(shine, plan: GenerationPlan) -> list[CombinedLora]:
    """Encode the plan's passes and reduce every owner's rows as they come (see the module docstring); one LoRA per
    context, in context order. With chunks, a progress bar counts them when there is more than one pass
    (transformers' progress-bar setting applies: ``transformers.utils.logging.disable_progress_bar()`` hides it)."""
    rank, pad_id, device = shine.config.exported_rank, pad_token_id(shine.tokenizer), shine.memory_slots.device
    open_owners: dict[int, KeepOne | LoraAccumulator] = {}
    done: dict[int, CombinedLora] = {}
    quiet = plan.chunking is None or len(plan.passes) <= 1 or not transformers_logging.is_progress_bar_enabled()
    with tqdm(total=len(plan.rows), desc="Encoding chunks", unit="chunk", disable=quiet) as bar:
        for rows in plan.passes:
            ids, mask = left_pad([plan.rows[row] for row in rows], pad_id)
            lora = shine.generate_lora(ids.to(device), mask.to(device))
            for position, row in enumerate(rows):
                owner = plan.owners[row]
                if owner not in open_owners:
                    open_owners[owner] = reducer(plan, owner, rank)
                open_owners[owner].add(peft_state_dict(shine.base_lm, shine.config.module_specs, lora, position))
                if open_owners[owner].count == len(plan.row_tokens[owner]):
                    done[owner] = open_owners.pop(owner).result()
            del lora
            for accumulator in open_owners.values():  # "svd": back to the budget rank (a no-op for the others)
                accumulator.compress()
            bar.update(len(rows))
    if open_owners or len(done) != len(plan.row_tokens):
        raise ModelStateError("Internal error: encoder rows and contexts went out of step.")
    return [done[owner] for owner in range(len(plan.row_tokens))]


def add_generated(base_lm: torch.nn.Module, peft_model: PeftModel | None, config: LoraConfig, names: Sequence[str],
                  loras: Sequence[CombinedLora]) -> PeftModel:
    """Add each LoRA as adapter ``name`` on the base's shared `PeftModel` (its tensors become peft's parameters, no
    copy), the last one active. When every LoRA has the generated rank they share ``config`` and go in one
    `store.add_adapters` call (which activates only the last: linear in their number); otherwise (chunked documents,
    each of its own rank) one call per adapter. All or nothing: if any add fails, every adapter of ``names`` is
    removed from the base, including one this call was replacing (rather than leaving it half-written), and the
    error is raised."""
    groups = [range(len(names))] if all(lora.rank == config.r for lora in loras) else [[i] for i in range(len(names))]
    touched: list[str] = []
    try:
        for group in groups:
            rank_config = copy.deepcopy(config)
            rank_config.r = rank_config.lora_alpha = loras[group[0]].rank
            touched.extend(names[index] for index in group)
            peft_model = add_adapters(base_lm, peft_model, rank_config, {names[i]: loras[i].state for i in group})
    except BaseException:
        discard_adapters(base_lm, peft_model, touched)
        raise
    return peft_model


def adapter_records(plan: GenerationPlan, texts: Sequence[str], names: Sequence[str], loras: Sequence[CombinedLora],
                    seconds: float) -> dict[str, dict[str, Any]]:
    """One `adapter_info` entry per adapter: the context hash, the generation time per context, the token count of
    each encoder row (one for an unchunked context), the chunking rule (``None`` unchunked), the adapter's rank and,
    for ``"svd"``, the largest relative truncation error."""
    rule = plan.chunking.combine if plan.chunking is not None else None
    return {name: {"context_sha256": context_sha256(text), "generation_seconds": seconds,
                   "chunk_tokens": plan.row_tokens[owner], "combine": rule, "rank": lora.rank,
                   "svd_max_error": lora.max_error if rule == "svd" else None}
            for owner, (name, text, lora) in enumerate(zip(names, texts, loras))}


@dataclass(frozen=True)
class Generated:
    """What `generate` made: the base's `PeftModel` with the new adapters, and their `adapter_info` entries."""

    peft_model: PeftModel
    records: dict[str, dict[str, Any]]


def generate(shine, texts: Sequence[str], names: Sequence[str], *, truncation: bool = False,
             batch_size: int | None = None, chunking: ChunkingConfig | Mapping | bool | int | None = None,
             ) -> Generated:
    """Plan, encode, reduce, add and record (the module docstring's five steps). The caller holds the generation
    lock and stores the result on the model."""
    started = time.perf_counter()
    plan = plan_generation(shine, texts, truncation=truncation, batch_size=batch_size, chunking=chunking)
    with evaluation_mode(shine):
        loras = encode_plan(shine, plan)
    peft_model = add_generated(shine.base_lm, shine.peft_model, shine.adapter_lora_config(), names, loras)
    seconds = (time.perf_counter() - started) / len(texts)
    return Generated(peft_model, adapter_records(plan, texts, names, loras, seconds))
