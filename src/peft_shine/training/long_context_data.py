"""Stage-2 examples whose context is several paragraphs, read chunk-wise exactly as at inference.

``generate_adapter(text, chunking=...)`` cuts a long document into chunks (`peft_shine.adapters.chunking`), generates one LoRA
per chunk and combines them (`peft_shine.adapters.combine`, ``"mean"`` by default). Training with ``chunk_tokens`` set
(`ShineTrainingArguments`) shows the hypernetwork that same path, so it learns the combination it is used with:

* `build_chunked_qa_examples`: SHINE's single-QA with distractors, one question per example, its paragraph at a
  random position among ``num_distractors``–``max_num_distractors`` other records' paragraphs (the count drawn per
  example; no length budget: the context is as long as its paragraphs);
* `tokenize_chunked_examples`: the conversation as for every stage-2 example (`data.tokenize_examples`), the context
  cut by `chunking.chunk_document` — the inference chunker — into ``context_chunks`` (token-id lists);
* `ChunkedShineDataCollator`: the chunks of every example of the batch flattened and **left**-padded into one
  ``context_input_ids`` batch (one batched, differentiable `ShineModel.generate_lora` pass), with
  ``context_chunk_owner`` (the example of each chunk row); `ShineModel.forward` combines each example's chunk LoRAs
  (`composition.combine_lora_weights`) before the answer pass on the conversation **without** the context.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from peft_shine.adapters.chunking import check_chunk_sizes, chunk_document
from peft_shine.adapters.contexts import left_pad
from peft_shine.errors import ChunkingError
from peft_shine.qa_data import QARecord
from peft_shine.training.collate import ShineDataCollator
from peft_shine.training.data import (
    TEXT_SEPARATOR,
    Example,
    _qa_messages,
    _with_distractors,
    as_qa_records,
    tokenize_examples,
)


logger = logging.getLogger(__name__)

CHUNKS_COLUMN = "context_chunks"


def check_distractor_range(low: int, high: int) -> None:
    """Validate a distractor-count range ``0 <= low <= high`` (raises `ChunkingError` naming the fix)."""
    if isinstance(low, bool) or isinstance(high, bool) or not isinstance(low, int) or not isinstance(high, int) \
            or not 0 <= low <= high:
        raise ChunkingError(f"Need 0 <= num_distractors <= max_num_distractors, got {low} and {high}; set "
                            f"max_num_distractors to at least num_distractors.")


def check_chunked_arguments(args: Any) -> None:
    """The chunked stage-2 options of `ShineTrainingArguments` fit together (`ChunkingError` naming the fix)."""
    if args.stage != "instruct" or args.qa_mode != "single":
        raise ChunkingError(f"chunk_tokens applies to stage 'instruct' with qa_mode 'single' (got stage "
                            f"{args.stage!r}, qa_mode {args.qa_mode!r}); set qa_mode: single or drop chunk_tokens.")
    if args.objective != "ce" or args.teacher_answers:
        raise ChunkingError("chunk_tokens trains on the gold answers with objective 'ce' (no in-context teacher for "
                            "multi-chunk contexts); set objective: ce and teacher_answers: false.")
    if args.chunk_combine not in ("mean", "cat"):
        raise ChunkingError(f"chunk_combine must be 'mean' or 'cat' for training (the exact rules), got "
                            f"{args.chunk_combine!r}.")
    check_chunk_sizes(args.chunk_tokens)
    high = args.num_distractors if args.max_num_distractors is None else args.max_num_distractors
    check_distractor_range(args.num_distractors, high)


def build_chunked_qa_examples(records: Iterable[QARecord | Mapping[str, Any]], num_distractors: int = 2,
                              max_num_distractors: int | None = None, seed: int = 0,
                              separator: str = TEXT_SEPARATOR) -> list[Example]:
    """Single-QA examples with long contexts: each record's question, its paragraph placed at a random position among
    ``k`` paragraphs of other contexts, ``k`` drawn uniformly from ``num_distractors … max_num_distractors``
    (default: exactly ``num_distractors``), fewer only when there are not that many other contexts."""
    high = num_distractors if max_num_distractors is None else max_num_distractors
    check_distractor_range(num_distractors, high)
    rng = random.Random(seed)
    by_context: dict[str, list[QARecord]] = {}
    for record in as_qa_records(records):
        by_context.setdefault(record.context, []).append(record)
    contexts = list(by_context)
    unbounded = [0] * len(contexts)  # no token budget: every drawn distractor is kept
    examples = []
    for index, group in enumerate(by_context.values()):
        for record in group:
            count = rng.randint(num_distractors, high)
            context = _with_distractors(index, contexts, unbounded, math.inf, count, rng, separator, 0)
            examples.append({"context": context, "messages": _qa_messages([record])})
    rng.shuffle(examples)
    return examples


def tokenize_chunked_examples(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, chunk_tokens: int,
                              max_conversation_length: int):
    """A `datasets.Dataset` with ``context_chunks`` (the context cut by `chunking.chunk_document` into chunks of at
    most ``chunk_tokens`` tokens, as `generate_adapter(..., chunking=...)` cuts it), ``input_ids`` and ``labels``
    (the conversation, truncated and filtered as `data.tokenize_examples` does)."""
    check_chunk_sizes(chunk_tokens)
    encoded = tokenize_examples(examples, tokenizer, max_context_length=10**9,
                                max_conversation_length=max_conversation_length, keep_raw=True)

    def chunk(example: Mapping[str, Any]) -> dict[str, list[list[int]]]:
        return {CHUNKS_COLUMN: [list(c.token_ids) for c in chunk_document(tokenizer, example["context"],
                                                                           chunk_tokens)]}

    dataset = encoded.map(chunk, remove_columns=["context", "messages", "dropped_turns", "context_input_ids"],
                          desc="Chunking contexts")
    counts = [len(chunks) for chunks in dataset[CHUNKS_COLUMN]]
    logger.info("Chunked contexts: %d examples, %d–%d chunks of <= %d tokens (mean %.2f).", len(counts),
                min(counts), max(counts), chunk_tokens, sum(counts) / len(counts))
    return dataset


@dataclass
class ChunkedShineDataCollator(ShineDataCollator):
    """`ShineDataCollator` for chunked contexts: every example's ``context_chunks`` flattened, in example order, into
    one left-padded ``context_input_ids`` / ``context_attention_mask`` batch, and ``context_chunk_owner`` (long,
    one entry per chunk row: the index of its example in the batch). The conversation side is unchanged."""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        chunks = [list(chunk) for feature in features for chunk in feature[CHUNKS_COLUMN]]
        owners = [row for row, feature in enumerate(features) for _ in feature[CHUNKS_COLUMN]]
        if len(set(owners)) != len(features):
            raise ChunkingError("An example has no context chunks; build the data with tokenize_chunked_examples.")
        context_ids, context_mask = left_pad(chunks, self.pad_token_id)
        return {"context_input_ids": context_ids, "context_attention_mask": context_mask,
                "context_chunk_owner": torch.tensor(owners, dtype=torch.long), **self.conversation_batch(features)}
