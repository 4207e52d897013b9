"""The training loss in one place: cross-entropy, the top-k distillation KL, the hidden-state term and the in-batch
contrastive term, their weights (`LossWeights`) and how they combine (`training_loss`); also the one labelled-position
mask (`labelled_positions`) every pass that scores answers uses.

`topk_kl` is KL(teacher ‖ student) over ``top_k + 1`` buckets: the teacher's top-k tokens and one tail bucket
holding the rest of the probability mass on both sides (teacher tail ``1 − Σ p_topk``, student tail ``1 − Σ q_topk``
over the same ids). It is exactly zero when the two distributions agree on those buckets and positive otherwise,
and needs no renormalisation of the truncated teacher distribution. `hidden_l1` is the optional hidden-state
matching term: the normalised L1 distance between the student's and the teacher's residual streams on a few decoder
layers at the same answer positions. Where the targets come from: `peft_shine.training.distillation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from peft_shine.errors import ConfigError, DataError


IGNORE_INDEX = -100  # label of a position that is not scored
_TAIL_FLOOR = 1e-6  # smallest tail mass kept inside log(): a teacher sure of its top-k still has a finite tail term


def topk_kl(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(teacher ‖ student) over the teacher's top-k tokens plus one tail bucket, shape ``(tokens,)``.

    Args:
        student_logits: ``(tokens, vocab)`` student logits at the labelled positions.
        teacher_ids: ``(tokens, k)`` the teacher's top-k token ids there.
        teacher_logprobs: ``(tokens, k)`` their teacher log-probabilities (full-vocabulary log-softmax).
    """
    student_logprobs = F.log_softmax(student_logits.float(), dim=-1).gather(-1, teacher_ids)
    teacher_logprobs = teacher_logprobs.float()
    teacher_p = teacher_logprobs.exp()
    head = (teacher_p * (teacher_logprobs - student_logprobs)).sum(-1)
    teacher_tail = (1.0 - teacher_p.sum(-1)).clamp(min=_TAIL_FLOOR)
    student_tail = (1.0 - student_logprobs.exp().sum(-1)).clamp(min=_TAIL_FLOOR)
    return head + teacher_tail * (teacher_tail.log() - student_tail.log())


def hidden_l1(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Per-token normalised L1 distance of hidden states, shape ``(tokens,)``: for each matched layer
    ``‖h_student − h_teacher‖₁ / ‖h_teacher‖₁``, averaged over the layers. Zero exactly when the states agree; scale
    free, so every layer counts alike whatever the norm of its residual stream.

    Args:
        student_hidden: ``(tokens, layers, hidden)`` the student's states at the labelled positions.
        teacher_hidden: the teacher's states there, same shape (any float dtype; stored as float16).
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise DataError(f"Hidden states {tuple(student_hidden.shape)} (student) and {tuple(teacher_hidden.shape)} "
                        f"(teacher) do not line up: the targets belong to another batch or layer choice.")
    teacher_hidden = teacher_hidden.float()
    distance = (student_hidden.float() - teacher_hidden).abs().sum(-1)
    return (distance / teacher_hidden.abs().sum(-1).clamp(min=_TAIL_FLOOR)).mean(-1)


def per_context_mean(values: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Per-row means of per-token ``values`` (``rows[i]`` = the row of token ``i``), shape ``(num_rows,)``; rows
    without a token give 0."""
    sums = values.new_zeros(num_rows).index_add(0, rows, values)
    counts = values.new_zeros(num_rows).index_add(0, rows, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def teacher_kl(logits: torch.Tensor, targets: torch.Tensor, teacher_ids: torch.Tensor | None,
               teacher_logprobs: torch.Tensor | None) -> torch.Tensor:
    """`topk_kl` of the labelled-position ``logits`` against a batch's stored teacher targets (one row per labelled
    token), with a clear error when they are missing or belong to another batch."""
    if teacher_ids is None or teacher_logprobs is None:
        raise ConfigError("A distillation loss weight needs teacher_topk_ids and teacher_topk_logprobs (build the "
                          "dataset with objective 'kd' or 'kd+ce').")
    if teacher_ids.shape[0] != targets.numel():
        raise DataError(f"{teacher_ids.shape[0]} teacher target rows for {targets.numel()} labelled tokens: the "
                        f"targets do not belong to this batch.")
    return topk_kl(logits, teacher_ids, teacher_logprobs)


def weighted_answer_loss(ce: torch.Tensor, kd: torch.Tensor | None, rows: torch.Tensor, num_rows: int,
                         weights: tuple[float, float], num_items: int | torch.Tensor | None) -> torch.Tensor:
    """The training loss from per-token cross-entropy ``ce`` and KL ``kd`` (``None``: no distillation term).

    Without ``kd``: ``weights[0] · Σ ce / num_items`` (the labelled-token count of the accumulated batch, else of
    this one). With ``kd``: ``Σ_rows mean_tokens(weights[0] · ce + weights[1] · kd) / num_items`` (the number of
    conversations of the accumulated batch, else ``num_rows``): every context weighs the same.
    """
    if kd is None:
        denominator = num_items if num_items is not None else max(ce.numel(), 1)
        return weights[0] * ce.sum() / denominator
    per_row = per_context_mean(weights[0] * ce + weights[1] * kd, rows, num_rows).sum()
    return per_row / (num_items if num_items is not None else num_rows)


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """The ``(batch, length)`` mask of the positions whose **next** token is labelled (not `IGNORE_INDEX`): where a
    causal LM's logits are scored against ``labels`` shifted by one."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


@dataclass(frozen=True)
class LossWeights:
    """Weights of the training loss's terms: cross-entropy on the gold tokens (``ce``), top-k KL to the in-context
    teacher (``kd``), hidden-state matching (``hidden``, on ``hidden_layers``) and the in-batch contrastive term
    (``contrastive``: InfoNCE at ``temperature`` against ``negatives`` other adapters of the batch)."""

    ce: float = 1.0
    kd: float = 0.0
    hidden: float = 0.0
    contrastive: float = 0.0
    temperature: float = 1.0
    negatives: int = 1
    hidden_layers: tuple[int, ...] = ()

    @classmethod
    def of(cls, weights: LossWeights | tuple[float, float]) -> LossWeights:
        """``weights`` as `LossWeights` (a ``(ce, kd)`` pair is the older form)."""
        return weights if isinstance(weights, LossWeights) else cls(ce=weights[0], kd=weights[1])


def contrastive_nce(nll: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-conversation InfoNCE, shape ``(rows,)``, from ``nll (rows, 1 + negatives)``: the mean answer NLL per token
    of each conversation under its own context's adapter (column 0) and under other contexts' adapters. The scores
    are ``−nll / temperature``; the loss is ``−log softmax(scores)[0]``, ``log(1 + negatives)`` when every adapter
    scores alike, towards 0 when the own adapter is far the most likely (and never NaN: finite inputs, finite
    gradients)."""
    scores = -nll / temperature
    return torch.logsumexp(scores, dim=-1) - scores[:, 0]


def training_loss(ce: torch.Tensor, rows: torch.Tensor, num_rows: int, weights: LossWeights,
                  num_items: int | torch.Tensor | None, kd: torch.Tensor | None = None,
                  hidden: torch.Tensor | None = None, contrastive: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss from per-token ``ce``, ``kd`` and ``hidden`` (``rows[i]``: the row of token ``i``) and the
    per-row ``contrastive`` term (`contrastive_nce`), normalised for gradient accumulation by ``num_items`` (the
    accumulated batch's labelled tokens for plain CE, its conversations otherwise; ``None``: this batch's)."""
    per_token = None if kd is None else weights.kd * kd
    if hidden is not None:
        per_token = weights.hidden * hidden if per_token is None else per_token + weights.hidden * hidden
    loss = weighted_answer_loss(ce, per_token, rows, num_rows, (weights.ce, 1.0), num_items)
    if contrastive is None or not weights.contrastive:
        return loss
    if per_token is not None:  # averaged per context: num_items counts conversations
        return loss + weights.contrastive * contrastive.sum() / (num_items if num_items is not None else num_rows)
    share = 1.0 if num_items is None else ce.numel() / num_items  # this batch's share of the accumulated tokens
    return loss + weights.contrastive * contrastive.mean() * share
