"""Batches for `ShineModel.forward`: contexts **left**-padded (pass 1 reads the memory slots after them),
conversations **right**-padded with -100 labels on padding, teacher targets concatenated in batch order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from peft_shine.adapters.contexts import left_pad
from peft_shine.hypernetwork.losses import IGNORE_INDEX


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int, multiple_of: int | None = None) -> torch.Tensor:
    """Right-pad id lists into a ``(batch, width)`` tensor (width rounded up to ``multiple_of``)."""
    width = max(len(ids) for ids in sequences)
    width = -(-width // multiple_of) * multiple_of if multiple_of else width
    padded = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(sequences):
        padded[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
    return padded


def rows_per_context(features: Sequence[Mapping[str, Sequence]], pad_id: int) -> tuple[list, list]:
    """``(input_ids rows, label rows)`` of a batch: one row per example, or, when the examples hold lists of rows
    (separate QA), ``k`` = the most rows of an example for every example, contiguous (what `LoraWeights` maps to
    one context each); an example with fewer rows is filled with one-token rows labelled -100 (no loss)."""
    rows = [f["input_ids"] for f in features]
    if not rows or not rows[0] or not isinstance(rows[0][0], Sequence):
        return rows, [f["labels"] for f in features]
    k = max(len(example) for example in rows)
    filler = k * [[pad_id]]
    ids = [list(row) for example in rows for row in (list(example) + filler)[:k]]
    labels = [list(row) for f in features for row in (list(f["labels"]) + k * [[IGNORE_INDEX]])[:k]]
    return ids, labels


@dataclass
class ShineDataCollator:
    """Batches tokenised examples for `ShineModel.forward`: contexts **left**-padded (``context_input_ids``,
    ``context_attention_mask``), conversations **right**-padded (``input_ids``, ``attention_mask``, ``labels``
    with -100 on padding)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        context_ids, context_mask = left_pad([list(f["context_input_ids"]) for f in features], self.pad_token_id)
        return {"context_input_ids": context_ids, "context_attention_mask": context_mask,
                **self.conversation_batch(features)}

    def conversation_batch(self, features: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
        """The answer-pass part of a batch: right-padded conversations, their mask, labels and teacher targets.
        Examples holding several rows (separate QA) give ``k`` contiguous rows each (`rows_per_context`)."""
        conversations, label_rows = rows_per_context(features, self.pad_token_id)
        input_ids = right_pad(conversations, self.pad_token_id, self.pad_to_multiple_of)
        lengths = torch.tensor([len(ids) for ids in conversations])
        attention_mask = (torch.arange(input_ids.shape[1])[None] < lengths[:, None]).long()
        labels = right_pad(label_rows, IGNORE_INDEX, self.pad_to_multiple_of)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for name in ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_hidden"):  # one row per labelled token,
            if name in features[0]:  # rows in batch order (as forward reads); float columns as float32
                batch[name] = torch.cat([torch.as_tensor(f[name], dtype=None if name.endswith("ids") else
                                                         torch.float32) for f in features])
        return batch
