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
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from peft_shine.adapters.contexts import pad_token_id
from peft_shine.adapters.pipeline import ChunkingConfig, resolve_chunking
from peft_shine.errors import ConfigError
from peft_shine.modeling_shine import BASE_PREFIX, ShineModel
from peft_shine.training.arguments import ShineTrainingArguments
from peft_shine.training.collate import ShineDataCollator
from peft_shine.training.data import (
    as_qa_records,
    build_pretraining_examples,
    build_qa_examples,
    conversation_tokens,
    texts_from_column,
    tokenize_examples,
)
from peft_shine.training.distillation import add_teacher_targets, hidden_layer_indices, with_teacher_answers
from peft_shine.training.long_context_data import (
    ChunkedShineDataCollator,
    build_chunked_qa_examples,
    tokenize_chunked_examples,
)
from peft_shine.training.monitor import held_out_metrics
from peft_shine.training.resume import load_hypernetwork_weights
from peft_shine.training.trainer_hub import ShineHubMixin
from peft_shine.training.weight_guard import NonFiniteWeightsGuard, nonfinite_flag


logger = logging.getLogger(__name__)

__all__ = ["ShineTrainer", "ShineTrainingArguments", "build_dataset", "nonfinite_flag"]

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
    mode = (args.eval_qa_mode or args.qa_mode) if held_out else args.qa_mode
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
        examples = build_qa_examples(data, tokenizer, args.max_context_length, mode=mode,
                                     num_distractors=args.num_distractors, seed=seed,
                                     questions_per_example=args.questions_per_example)
    separate = args.stage != "pretrain" and mode == "separate"  # rows of one-question conversations: no targets
    distill = (args.distills if distill is None else distill) and teacher is not None and not separate
    dataset = with_lengths(tokenize_examples(examples, tokenizer, args.max_context_length,
                                             args.max_conversation_length, keep_raw=distill), args)
    if not distill:
        return dataset
    hidden = (hidden_layer_indices(teacher.config.num_base_layers, args.hidden_layers)
              if args.hidden_matching_weight and not held_out else ())  # the monitor needs no hidden targets
    return add_teacher_targets(dataset, teacher.base_lm, tokenizer, top_k=args.kd_top_k,
                               batch_size=args.teacher_batch_size, cache_dir=teacher_cache,
                               peft_disabled=teacher._peft_disabled, hidden_layers=hidden)


def with_lengths(dataset, args: ShineTrainingArguments):
    """``dataset`` with a length column (context + conversation tokens: the positions both passes pad) when the
    sampler groups by length (``train_sampling_strategy: group_by_length``), so a batch of several contexts holds
    contexts of similar lengths and little padding; unchanged otherwise."""
    if args.train_sampling_strategy not in ("group_by_length", "batch_rebalance") \
            or args.length_column_name in dataset.column_names:
        return dataset
    lengths = [len(context) + conversation_tokens(conversation)
               for context, conversation in zip(dataset["context_input_ids"], dataset["input_ids"])]
    return dataset.add_column(args.length_column_name, lengths)


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
        shine = self.accelerator.unwrap_model(model)
        inputs = {**inputs, "loss_weights": self.args.loss_weights(shine.config.num_base_layers),
                  "chunk_combine": self.args.chunk_combine}  # every term is computed by `losses.training_loss`
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
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
    def evaluation_loop(self, dataloader, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> EvalLoopOutput:
        """Stock `evaluate()` (logging, callbacks, speed metrics, several eval datasets) over this loop: the stock
        loop runs first when ``compute_metrics`` is given (its metrics are kept), then the held-out metrics of
        `training.monitor.held_out_metrics` are merged in: ``{prefix}_loss`` token-weighted over all processes, with
        ``eval_controls`` ``_no_adapter`` and ``_wrong_context``, and with ``eval_discrimination`` the own-adapter
        top-1 rate, margin and the adapters' mean pairwise cosine over ``eval_discrimination_contexts`` contexts."""
        if self.compute_metrics is not None:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
        else:
            output = EvalLoopOutput(predictions=None, label_ids=None, metrics={},
                                    num_samples=self.num_examples(dataloader))
        shine = self.accelerator.unwrap_model(self.model)
        was_training = shine.training
        shine.eval()
        batches = [self._prepare_inputs(batch) for batch in dataloader]
        reduce = lambda totals: self.accelerator.reduce(totals.to(self.args.device), reduction="sum").cpu()  # noqa: E731
        output.metrics.update(held_out_metrics(shine, batches, self.args.eval_controls, self.args.chunk_combine,
                                               reduce, metric_key_prefix, self.args.eval_discrimination,
                                               self.args.eval_discrimination_contexts))
        shine.train(was_training)
        return output

    # ------------------------------------------------------------------ checkpoints
    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Resume loads hypernetwork weights only: the base LM's keys are absent by design."""
        missing = [key for key in load_result.missing_keys if not key.startswith(BASE_PREFIX)]
        if missing or load_result.unexpected_keys:
            logger.warning("Checkpoint load: missing %s, unexpected %s.", missing, load_result.unexpected_keys)
