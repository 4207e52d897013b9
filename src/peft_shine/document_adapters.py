"""One adapter from a document longer than the hypernetwork's window: chunk, encode the chunks in batches, combine.

``shine.generate_adapter(text, chunking=ChunkingConfig(...))`` (or ``chunking=True`` for the defaults) comes here:

1. each document is cut into chunks of at most ``chunk_tokens`` tokens (`peft_shine.chunking`: paragraph, then
   sentence, then word boundaries; optional overlap);
2. the chunks of all documents are encoded ``batch_size`` at a time (at most 4,096 positions per pass, like
   unchunked contexts; by default one at a time on a CPU, see `chunks_per_pass`) by the ordinary batched
   generation (`ShineModel.generate_lora`), so peak memory is bounded by one pass, not by the document (a progress
   bar counts the chunks);
3. each chunk's LoRA goes straight into its document's `composition.LoraAccumulator` (the chunk LoRA is dropped):
   ``"cat"`` (the exact sum of the chunk updates, rank ``chunks × r``) and ``"mean"`` (their exact mean, same rank)
   write it into the concatenated factors, allocated once, which become the adapter's own tensors; ``"svd"`` (the sum
   truncated to ``rank``) re-truncates after every encoder batch, so it holds at most ``rank`` + one batch of
   chunk ranks, whatever the document's length (exact while the sum's rank fits the budget);
4. only when every document is combined are the adapters loaded on the base's `PeftModel` (nothing is added if
   anything fails), one named adapter per document, each with its own rank (``lora_alpha = r``: scaling 1). The
   combined tensors become peft's parameters as they are (`adapter_store.add_adapters`: no copy, no initialisation
   of a large-rank adapter), so the output adapter is held once.

A one-chunk document gives exactly the adapter `generate_adapter` makes without chunking (``"svd"`` aside).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from peft_shine.adapter_store import GENERATION_LOCK, add_adapters, discard_adapters, evaluation_mode
from peft_shine.chunking import ChunkingError, TextChunk, check_chunk_sizes, chunk_document
from peft_shine.composition import CombinedLora, LoraAccumulator, check_rule
from peft_shine.contexts import DEFAULT_BATCH_SIZE, MAX_BATCH_TOKENS, context_sha256, left_pad, pad_token_id
from peft_shine.export import peft_state_dict


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
    """

    chunk_tokens: int | None = None
    overlap_tokens: int = 0
    combine: str = "mean"
    rank: int | None = None


def as_chunking_config(value: ChunkingConfig | Mapping | bool | int) -> ChunkingConfig:
    """Accept a `ChunkingConfig`, a dict of its fields, ``True`` (defaults) or an int (``chunk_tokens``)."""
    if isinstance(value, ChunkingConfig):
        return value
    if value is True:
        return ChunkingConfig()
    if isinstance(value, int) and not isinstance(value, bool):
        return ChunkingConfig(chunk_tokens=value)
    if isinstance(value, Mapping):
        unknown = set(value) - {"chunk_tokens", "overlap_tokens", "combine", "rank"}
        if unknown:
            raise ChunkingError(f"Unknown chunking options {sorted(unknown)}; known: chunk_tokens, overlap_tokens, "
                                f"combine, rank.")
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
    plans = [chunk_document(shine.tokenizer, text, config.chunk_tokens, config.overlap_tokens) for text in texts]
    for index, plan in enumerate(plans):
        try:
            check_rule(config.combine, config.rank, len(plan) * shine.config.exported_rank)
        except ValueError as error:
            raise type(error)(f"Document {index} ({len(plan)} chunks): {error}") from None
    return plans


def chunks_per_pass(shine, config: ChunkingConfig, batch_size: int | None) -> int:
    """At most ``batch_size`` chunks per encoder pass and at most `contexts.MAX_BATCH_TOKENS` positions (chunk +
    memory slots per row), as for unchunked contexts; at least one chunk. ``None``: one chunk per pass on a CPU
    (on one or two threads that is faster than 4 or 8 per pass, and holds one chunk's working tensors instead of
    several: ``benchmarks/bench_long_context.py``), `contexts.DEFAULT_BATCH_SIZE` on an accelerator."""
    if batch_size is None:
        batch_size = 1 if shine.memory_slots.device.type == "cpu" else DEFAULT_BATCH_SIZE
    width = config.chunk_tokens + shine.config.num_memory_slots
    return max(1, min(batch_size, MAX_BATCH_TOKENS // width))


@torch.no_grad()  # not inference_mode: the tensors become peft parameters
def encode_documents(shine, plans: Sequence[Sequence[TextChunk]], config: ChunkingConfig,
                     batch_size: int | None) -> Iterator[CombinedLora]:
    """Encode every chunk of every document, `chunks_per_pass` chunks per forward pass, write each chunk's LoRA into
    its document's `LoraAccumulator` at once, and yield each document's combined LoRA as soon as its last chunk is
    in. A progress bar counts the chunks when there is more than one pass (transformers' progress-bar setting
    applies: ``transformers.utils.logging.disable_progress_bar()`` hides it)."""
    flat = [(doc, chunk) for doc, plan in enumerate(plans) for chunk in plan]
    rank, rows = shine.config.exported_rank, chunks_per_pass(shine, config, batch_size)
    pad_id, device = pad_token_id(shine.tokenizer), shine.memory_slots.device
    accumulators: dict[int, LoraAccumulator] = {}
    quiet = len(flat) <= rows or not transformers_logging.is_progress_bar_enabled()
    with tqdm(total=len(flat), desc="Encoding chunks", unit="chunk", disable=quiet) as bar:
        for start in range(0, len(flat), rows):
            batch = flat[start:start + rows]
            ids, mask = left_pad([list(chunk.token_ids) for _, chunk in batch], pad_id)
            lora = shine.generate_lora(ids.to(device), mask.to(device))
            for row, (doc, _) in enumerate(batch):
                if doc not in accumulators:
                    accumulators[doc] = LoraAccumulator([rank] * len(plans[doc]), config.combine, rank=config.rank)
                accumulators[doc].add(peft_state_dict(shine.base_lm, shine.config.module_specs, lora, row))
                if accumulators[doc].count == len(plans[doc]):
                    yield accumulators.pop(doc).result()
            del lora
            for accumulator in accumulators.values():  # "svd": back to the budget rank (a no-op for the others)
                accumulator.compress()
            bar.update(len(batch))
    if accumulators:
        raise RuntimeError("Internal error: chunks and documents went out of step.")


def load_adapters(shine, names: Sequence[str], combined: Sequence[CombinedLora]) -> None:
    """Load each combined LoRA as adapter ``name`` (its tensors become peft's parameters, no copy), the last one
    active. All or nothing: if any load fails, every adapter of ``names`` is removed from the base, including one
    this call was replacing (rather than leaving it half-written), and the error is raised."""
    touched: list[str] = []
    try:
        for name, lora in zip(names, combined):
            lora_config = copy.deepcopy(shine.adapter_lora_config())
            lora_config.r = lora_config.lora_alpha = lora.rank
            touched.append(name)
            shine.peft_model = add_adapters(shine.base_lm, shine.peft_model, lora_config, {name: lora.state})
        shine.peft_model.set_adapter(names[-1])
    except BaseException:
        shine.peft_model = discard_adapters(shine.base_lm, shine.peft_model, touched)
        raise


def generate_document_adapters(shine, texts: Sequence[str], names: Sequence[str],
                               chunking: ChunkingConfig | Mapping | bool | int, batch_size: int | None):
    """Chunked `generate_adapter`: one combined adapter per document, named ``names``; returns the `PeftModel`.

    ``shine.adapter_info[name]`` records, beside the context hash and the generation time, the chunks' token
    counts, the combination rule, the adapter's rank and (``"svd"``) the largest relative truncation error.
    """
    config = resolve_chunking(shine, chunking)
    plans = plan_documents(shine, texts, config)
    with GENERATION_LOCK:
        started = time.perf_counter()
        with evaluation_mode(shine):
            combined = list(encode_documents(shine, plans, config, batch_size))
        load_adapters(shine, names, combined)
        seconds = (time.perf_counter() - started) / len(texts)
        info = getattr(shine, "adapter_info", {})
        for name, text, plan, lora in zip(names, texts, plans, combined):
            info[name] = {"context_sha256": context_sha256(text), "generation_seconds": seconds,
                          "chunk_tokens": [chunk.num_tokens for chunk in plan], "combine": lora.rule,
                          "rank": lora.rank, "svd_max_error": lora.max_error if lora.rule == "svd" else None}
        shine.adapter_info = info
        return shine.peft_model
