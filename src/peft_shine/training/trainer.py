"""`ShineTrainingArguments` and `ShineTrainer`: the two SHINE training stages on the `transformers.Trainer` loop.

What the subclass adds to `Trainer` (everything else — accelerate/DDP, gradient accumulation, schedules,
checkpoints, resume, logging — is the stock loop):

* the data: `build_dataset` turns raw texts (stage ``"pretrain"``) or QA records (stage ``"instruct"``) into a
  tokenised dataset with the arguments' lengths and ratios, batched by `ShineDataCollator`;
* the loss: `ShineModel.forward` divides its summed loss by ``num_items_in_batch``, so gradient accumulation and
  multi-process runs weight every labelled token equally; an objective ending in ``+hidden`` adds, in
  `compute_loss`, the hidden-state matching term (`losses.hidden_l1`) on the answer pass's captured layer outputs;
* non-finite steps: a micro-batch whose loss is NaN/Inf back-propagates NaN instead (the loss is multiplied by
  NaN on the device: no host sync per micro-batch), and an optimizer pre-step hook skips any step whose gradient
  norm is not finite, so **no parameter, moment or weight-decay update is applied**. The decision is one flag,
  all-reduced (max) over the ranks when distributed, so every rank of DDP, FSDP or ZeRO (whose gradient shards
  differ) skips the same steps. A fused AdamW (``adamw_torch_fused``, the default optimizer on recent torch) skips
  on the device through its ``found_inf`` input (no host sync at all); any other optimizer reads the flag once per
  optimizer step and drops the gradients. Both are counted (``nonfinite_losses``, ``skipped_steps`` in the
  training logs, read only when logging). The learning-rate schedule still advances. A step whose finite gradients
  still leave NaN/Inf in the weights (an overflowing update) is noticed by a post-step flag, read when logging or
  saving: training stops with `NonFiniteWeightsError` naming the tensor, before such a checkpoint is written;
* chunked contexts (``chunk_tokens``): stage-2 single-QA contexts of several paragraphs cut by the inference
  chunker, the chunk LoRAs of each example combined by ``chunk_combine`` (`training.long_context_data`);
* evaluation: held-out loss with the generated adapter (``eval_loss``), with no adapter
  (``eval_loss_no_adapter``) and with the adapter generated from a *different* context of the batch
  (``eval_loss_wrong_context``; the context batch rolled by one). The gap between the last and the first is the
  part of the gain that comes from the context itself;
* checkpoints hold only the hypernetwork (`ShineModel.save_pretrained` drops the base LM); ``init_from`` starts
  stage 2 from a stage-1 checkpoint's weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from peft_shine.adapters.contexts import pad_token_id
from peft_shine.adapters.pipeline import ChunkingConfig, resolve_chunking
from peft_shine.errors import ConfigError
from peft_shine.hypernetwork.losses import hidden_l1, per_context_mean, topk_kl
from peft_shine.modeling_shine import BASE_PREFIX, ShineModel
from peft_shine.training.data import (
    QA_MODES,
    ShineDataCollator,
    as_qa_records,
    build_pretraining_examples,
    build_qa_examples,
    texts_from_column,
    tokenize_examples,
)
from peft_shine.training.distillation import (
    HIDDEN_COLUMN,
    add_teacher_targets,
    answer_hidden,
    capture_hidden,
    hidden_layer_indices,
    with_teacher_answers,
)
from peft_shine.training.long_context_data import (
    ChunkedShineDataCollator,
    build_chunked_qa_examples,
    check_chunked_arguments,
    tokenize_chunked_examples,
)
from peft_shine.training.resume import load_hypernetwork_weights
from peft_shine.training.trainer_hub import ShineHubMixin
from peft_shine.training.weight_guard import NonFiniteWeightsGuard, nonfinite_flag


logger = logging.getLogger(__name__)

STAGES = ("pretrain", "instruct")
OBJECTIVES = ("ce", "kd", "kd+ce", "kd+hidden", "kd+ce+hidden")


@dataclass
class ShineTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the SHINE data and stage settings.

    ``remove_unused_columns`` defaults to False (the collator's columns are exactly what ``forward`` takes) and
    ``ddp_find_unused_parameters`` to False (every trainable tensor takes part in every step).
    """

    stage: str = field(default="pretrain", metadata={"help": "'pretrain' (reconstruction/completion of texts) or "
                                                             "'instruct' (QA records)."})
    max_context_length: int = field(default=256, metadata={"help": "Context tokens kept (the rest is cut)."})
    max_conversation_length: int = field(default=320, metadata={"help": "Conversation tokens; whole trailing "
                                                                        "exchanges that do not fit are dropped."})
    completion_ratio: float = field(default=0.5, metadata={"help": "Stage 1: share of completion items."})
    min_completion_keep: float = field(default=0.7, metadata={"help": "Stage 1: least share of words a "
                                                                      "completion context keeps."})
    max_completion_keep: float = field(default=0.9, metadata={"help": "Stage 1: largest share of words kept."})
    qa_mode: str = field(default="mixed", metadata={"help": f"Stage 2 examples: one of {QA_MODES}."})
    num_distractors: int = field(default=2, metadata={"help": "Stage 2 single-QA: other contexts added (the "
                                                               "least number with chunk_tokens)."})
    chunk_tokens: int | None = field(default=None, metadata={
        "help": "Stage 2 single-QA read chunk-wise: contexts of num_distractors..max_num_distractors other paragraphs "
                "are cut into chunks of at most this many tokens (the inference chunker), encoded in one batch and "
                "their LoRAs combined by chunk_combine, as generate_adapter(chunking=...) does."})
    max_num_distractors: int | None = field(default=None, metadata={
        "help": "With chunk_tokens: the most distractor paragraphs per context (default: num_distractors)."})
    chunk_combine: str = field(default="mean", metadata={"help": "With chunk_tokens: 'mean' or 'cat' (as inference)."})
    text_column: str = field(default="text", metadata={"help": "Stage 1: the dataset column holding the texts."})
    init_from: str | None = field(default=None, metadata={"help": "Stage-1 checkpoint folder to start from."})
    objective: str = field(default="ce", metadata={"help": f"Answer-pass loss, one of {OBJECTIVES}: cross-entropy on "
                                                           "the gold tokens, distillation from the base model with "
                                                           "the context in its prompt, or both."})
    kd_top_k: int = field(default=16, metadata={"help": "Distillation: teacher tokens kept per position."})
    kd_weight: float = field(default=1.0, metadata={"help": "Distillation: weight of the KL term."})
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy term ('ce', 'kd+ce')."})
    hidden_weight: float = field(default=1.0, metadata={"help": "'...+hidden': weight of the hidden-state term "
                                                                "(normalised L1 to the teacher, `losses.hidden_l1`)."})
    hidden_layers: int = field(default=6, metadata={"help": "'...+hidden': evenly spaced decoder layers matched, "
                                                            "ending at the last one."})
    teacher_answers: bool = field(default=False, metadata={
        "help": "Stage 2: train on the teacher's own greedy answers (context in the prompt) instead of the gold "
                "answers."})
    teacher_batch_size: int = field(default=4, metadata={"help": "Rows per teacher pass when targets are built."})
    teacher_cache_dir: str | None = field(default=None, metadata={
        "help": "Folder of cached teacher targets and answers (default: {output_dir}/teacher-cache); runs on the "
                "same data and base can share one."})
    eval_controls: bool = field(default=True, metadata={"help": "Also report the no-adapter and wrong-context "
                                                                "losses at evaluation."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False for SHINE."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "Every trainable hypernetwork tensor is used in each step, so DDP needs no unused-parameter search."})

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}.")
        if self.qa_mode not in QA_MODES:
            raise ConfigError(f"qa_mode must be one of {QA_MODES}, got {self.qa_mode!r}.")
        if not 0.0 < self.min_completion_keep <= self.max_completion_keep <= 1.0:
            raise ConfigError("Need 0 < min_completion_keep <= max_completion_keep <= 1.")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.kd_top_k < 1 or self.hidden_layers < 1 or min(self.kd_weight, self.ce_weight, self.hidden_weight) < 0:
            raise ConfigError("Need kd_top_k >= 1, hidden_layers >= 1 and non-negative loss weights.")
        if min(self.max_context_length, self.max_conversation_length) < 1:
            raise ConfigError("max_context_length and max_conversation_length must be positive.")
        if self.chunk_tokens is not None:
            check_chunked_arguments(self)
        super().__post_init__()

    @property
    def distills(self) -> bool:
        """Whether the objective has a distillation term (the data then carries teacher targets)."""
        return self.objective != "ce"

    @property
    def loss_weights(self) -> tuple[float, float]:
        """``(ce, kd)`` weights of `ShineModel.forward` for this objective."""
        with_ce = self.objective in ("ce", "kd+ce", "kd+ce+hidden")
        return (self.ce_weight if with_ce else 0.0, 0.0 if self.objective == "ce" else self.kd_weight)

    @property
    def hidden_matching_weight(self) -> float:
        """Weight of the hidden-state matching term (0 unless the objective ends in ``+hidden``)."""
        return self.hidden_weight if self.objective.endswith("+hidden") else 0.0


def build_dataset(args: ShineTrainingArguments, tokenizer, data: Any, seed: int | None = None,
                  teacher: ShineModel | None = None, distill: bool | None = None, held_out: bool = False):
    """A tokenised dataset for ``args.stage``: ``data`` holds texts (a dataset with ``args.text_column``, dicts, or
    strings) for ``"pretrain"`` and QA records (`QARecord` or dicts in the shared format) for ``"instruct"``.

    With ``teacher`` (a `ShineModel` whose base LM is the teacher) and a distilling objective the teacher's top-k
    targets are added (cached in ``args.teacher_cache_dir``, default ``{output_dir}/teacher-cache``); with
    ``args.teacher_answers`` the QA records' answers are first replaced by the teacher's own greedy answers (cached
    there too). ``distill`` overrides whether targets are added (e.g. ``True`` for a held-out set whose teacher KL
    is monitored under any objective); a ``held_out`` set keeps its gold answers.
    """
    seed = args.seed if seed is None else seed
    if args.chunk_tokens is not None:  # long contexts read chunk-wise; no teacher targets (objective 'ce')
        examples = build_chunked_qa_examples(data, args.num_distractors, args.max_num_distractors, seed=seed)
        return tokenize_chunked_examples(examples, tokenizer, args.chunk_tokens, args.max_conversation_length)
    teacher_cache = Path(args.teacher_cache_dir or Path(args.output_dir) / "teacher-cache")
    if args.stage == "pretrain":
        examples = build_pretraining_examples(
            texts_from_column(data, args.text_column), tokenizer, args.max_context_length,
            args.max_conversation_length, completion_ratio=args.completion_ratio,
            min_completion_keep=args.min_completion_keep, max_completion_keep=args.max_completion_keep, seed=seed)
    else:
        if args.teacher_answers and teacher is not None and not held_out:
            data = with_teacher_answers(as_qa_records(data), teacher.base_lm, tokenizer,
                                        teacher_cache, args.teacher_batch_size,
                                        peft_disabled=teacher._peft_disabled)
        examples = build_qa_examples(data, tokenizer, args.max_context_length, mode=args.qa_mode,
                                     num_distractors=args.num_distractors, seed=seed)
    distill = (args.distills if distill is None else distill) and teacher is not None
    dataset = tokenize_examples(examples, tokenizer, args.max_context_length, args.max_conversation_length,
                                keep_raw=distill)
    if not distill:
        return dataset
    hidden = (hidden_layer_indices(teacher.config.num_base_layers, args.hidden_layers)
              if args.hidden_matching_weight and not held_out else ())  # the monitor needs no hidden targets
    return add_teacher_targets(dataset, teacher.base_lm, tokenizer, top_k=args.kd_top_k,
                               batch_size=args.teacher_batch_size, cache_dir=teacher_cache,
                               peft_disabled=teacher._peft_disabled, hidden_layers=hidden)


@torch.no_grad()
def held_out_losses(shine: ShineModel, batch: dict[str, torch.Tensor], controls: bool = True,
                    chunk_combine: str = "mean") -> torch.Tensor:
    """Summed answer-pass scores, shape ``(3, 3)``: rows are the generated adapter, no adapter and the adapter of a
    different context (the context batch rolled by one — for chunked contexts each example's chunks moved to the
    next example; zero for a single row); columns are the summed
    cross-entropy, the labelled-token count and, when the batch carries teacher targets, the summed distillation KL
    to the in-context teacher (else 0)."""
    result = torch.zeros(3, 3, dtype=torch.float64)
    has_teacher = "teacher_topk_ids" in batch
    weights = (1.0, 1.0 if has_teacher else 0.0)

    def scores(output) -> torch.Tensor:
        kd = output.kd_sum if output.kd_sum is not None else torch.zeros(())
        return torch.stack([output.ce_sum.double().cpu(), output.num_label_tokens.double().cpu(), kd.double().cpu()])

    owners = batch.get("context_chunk_owner")

    def run(inputs: dict) -> torch.Tensor:  # chunk_combine is read only when the batch has chunk owners
        return scores(shine(**inputs, num_items_in_batch=1, loss_weights=weights, chunk_combine=chunk_combine))

    result[0] = run(batch)
    if not controls:
        return result
    result[1] = no_adapter_scores(shine, batch)
    if owners is not None and batch["labels"].shape[0] > 1:
        rolled = {**batch, "context_chunk_owner": (owners + 1) % batch["labels"].shape[0]}
        result[2] = run(rolled)
    elif owners is None and batch["context_input_ids"].shape[0] > 1:
        rolled = {**batch, "context_input_ids": batch["context_input_ids"].roll(1, 0),
                  "context_attention_mask": batch["context_attention_mask"].roll(1, 0)}
        result[2] = run(rolled)
    return result


def no_adapter_scores(shine: ShineModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[summed cross-entropy, labelled tokens, summed KL to the teacher (0 without targets)]`` of the base LM
    alone on the batch's conversations."""
    logits, targets, _ = shine.answer_logits(None, batch["input_ids"], batch["labels"], batch["attention_mask"])
    logits = logits.float()
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    kd = (topk_kl(logits, batch["teacher_topk_ids"], batch["teacher_topk_logprobs"]).sum()
          if "teacher_topk_ids" in batch else torch.zeros(()))
    return torch.stack([ce.double(), torch.tensor(float(targets.numel()), dtype=torch.float64), kd.double()]).cpu()


class ShineTrainer(NonFiniteWeightsGuard, ShineHubMixin, Trainer):
    """`Trainer` for a `ShineModel` (see the module docstring for what it adds).

    Args:
        model: the hypernetwork with its base LM attached (only ``hypernetwork_parameters()`` are trained).
        args: `ShineTrainingArguments`.
        data_collator: defaults to `ShineDataCollator` with the tokenizer's pad id.
        processing_class: defaults to ``model.tokenizer``.
        **kwargs: passed to `Trainer`.
    """

    def __init__(self, model: ShineModel, args: ShineTrainingArguments, data_collator=None, processing_class=None,
                 **kwargs: Any) -> None:
        processing_class = processing_class if processing_class is not None else model.tokenizer
        if data_collator is None:
            if processing_class is None:
                raise ConfigError("Pass processing_class (the tokenizer) or attach the base model with a tokenizer.")
            collator = ShineDataCollator if args.chunk_tokens is None else ChunkedShineDataCollator
            data_collator = collator(pad_token_id(processing_class))
        if args.chunk_tokens is not None:  # the chunk size must be one generate_adapter(chunking=...) accepts
            resolve_chunking(model, ChunkingConfig(chunk_tokens=args.chunk_tokens, combine=args.chunk_combine))
        if args.init_from:
            load_hypernetwork_weights(model, args.init_from)
        super().__init__(model=model, args=args, data_collator=data_collator, processing_class=processing_class,
                         **kwargs)
        self._nonfinite_losses: torch.Tensor | int = 0  # device tensors once counting starts (read at log time)
        self._skipped_steps: torch.Tensor | int = 0

    @property
    def nonfinite_losses(self) -> int:
        """Micro-batches whose loss was NaN/Inf (on this process)."""
        return int(self._nonfinite_losses)

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for non-finite gradients (the same on every process)."""
        return int(self._skipped_steps)

    # ------------------------------------------------------------------ non-finite steps
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if not getattr(optimizer, "_shine_skip_hook", False):
            optimizer.register_step_pre_hook(self._skip_nonfinite_step)
            optimizer.register_step_post_hook(self._flag_nonfinite_weights)
            optimizer._shine_skip_hook = True
        return optimizer

    def _skip_nonfinite_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer pre-step hook: skip a step whose gradient norm is NaN/Inf on any rank (AdamW then leaves each
        parameter and its state untouched)."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        bad = nonfinite_flag([p.grad for p in params])
        self._skipped_steps = self._skipped_steps + bad.to(torch.int64)
        if all(group.get("fused") for group in optimizer.param_groups):
            optimizer.found_inf = bad.to(torch.float32)  # the fused kernel skips the update on the device
            return
        if bad.item():  # one host read per optimizer step (not per micro-batch)
            for param in params:
                param.grad = None
            logger.warning("Skipped optimizer step %d: non-finite gradients.", self.state.global_step + 1)

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """Distilling objectives average per context: count the conversations (rows) of the accumulated
        micro-batches instead of their labelled tokens, summed over processes like the token count."""
        if not self.args.distills or not batch_samples:
            return super()._get_num_items_in_batch(batch_samples, device)
        rows = torch.tensor(sum(batch["labels"].shape[0] for batch in batch_samples), device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            rows = self.accelerator.gather(rows).sum()
        return rows

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        teacher_hidden = inputs.pop(HIDDEN_COLUMN, None)
        inputs = {**inputs, "loss_weights": self.args.loss_weights, "chunk_combine": self.args.chunk_combine}
        weight = self.args.hidden_matching_weight if teacher_hidden is not None else 0.0
        shine = self.accelerator.unwrap_model(model)
        layers = hidden_layer_indices(shine.config.num_base_layers, self.args.hidden_layers) if weight else []
        with capture_hidden(shine.base_lm, layers) as captured:  # no hooks without the hidden term
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        if weight:  # Σ_rows mean_tokens(weight · hidden_l1) / contexts, added to the per-context KD loss
            labels = inputs["labels"]
            distance = hidden_l1(answer_hidden(captured, layers, labels), teacher_hidden.to(loss.device))
            rows = (labels[:, 1:] != -100).nonzero()[:, 0]
            denominator = num_items_in_batch if num_items_in_batch is not None else labels.shape[0]
            scale = (self.accelerator.num_processes  # the scaling Trainer.compute_loss applies to the model's loss
                     if self.args.average_tokens_across_devices and num_items_in_batch is not None else 1)
            loss = loss + scale * weight * per_context_mean(distance, rows, labels.shape[0]).sum() / denominator
        if model.training:  # a NaN/Inf loss back-propagates NaN (→ the step is skipped); decided on the device
            bad = ~torch.isfinite(loss.detach()).all()
            self._nonfinite_losses = self._nonfinite_losses + bad.to(torch.int64)
            loss = loss * torch.where(bad, float("nan"), 1.0).to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        self.check_weights_finite()
        if "loss" in logs:
            logs = {**logs, "nonfinite_losses": self.nonfinite_losses, "skipped_steps": self.skipped_steps}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, eval_dataset=None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Held-out loss with the generated adapter and, with ``eval_controls``, the no-adapter and wrong-context
        controls, token-weighted over all processes: ``{prefix}_loss``, ``{prefix}_loss_no_adapter``,
        ``{prefix}_loss_wrong_context``."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            metrics = {}
            for name, part in dataset.items():
                metrics.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        started = time.time()
        shine = self.accelerator.unwrap_model(self.model)
        was_training = shine.training
        shine.eval()
        totals = torch.zeros(3, 3, dtype=torch.float64, device=self.args.device)
        columns = getattr(dataset, "column_names", None) or list(dataset[0])  # a `datasets.Dataset` or a list
        has_teacher = "teacher_topk_ids" in columns
        for batch in self.get_eval_dataloader(dataset):
            totals += held_out_losses(shine, self._prepare_inputs(batch), self.args.eval_controls,
                                      self.args.chunk_combine).to(totals.device)
        totals = self.accelerator.reduce(totals, reduction="sum")
        shine.train(was_training)
        suffixes = ["", "_no_adapter", "_wrong_context"][: 3 if self.args.eval_controls else 1]
        metrics = {}
        for i, suffix in enumerate(suffixes):
            if totals[i, 1] > 0:
                metrics[f"{metric_key_prefix}_loss{suffix}"] = (totals[i, 0] / totals[i, 1]).item()
                if has_teacher:
                    metrics[f"{metric_key_prefix}_kd{suffix}"] = (totals[i, 2] / totals[i, 1]).item()
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - started, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Resume loads hypernetwork weights only: the base LM's keys are absent by design."""
        missing = [key for key in load_result.missing_keys if not key.startswith(BASE_PREFIX)]
        if missing or load_result.unexpected_keys:
            logger.warning("Checkpoint load: missing %s, unexpected %s.", missing, load_result.unexpected_keys)
