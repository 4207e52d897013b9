"""`ShineTrainingArguments`: `TrainingArguments` plus the SHINE data, stage and objective settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from peft_shine.errors import ConfigError
from peft_shine.hypernetwork.losses import LossWeights
from peft_shine.training.data import QA_MODES
from peft_shine.training.distillation import hidden_layer_indices
from peft_shine.training.long_context_data import check_chunked_arguments


STAGES = ("pretrain", "instruct")
BASE_OBJECTIVES = ("ce", "kd", "kd+ce", "kd+hidden", "kd+ce+hidden")
CONTRASTIVE = "+contrastive"
OBJECTIVES = BASE_OBJECTIVES + tuple(objective + CONTRASTIVE for objective in BASE_OBJECTIVES)


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
    qa_mode: str = field(default="mixed", metadata={"help": f"Stage 2 examples: one of {QA_MODES} ('separate': each "
                                                            "question in its own conversation, several per context)."})
    questions_per_example: int = field(default=4, metadata={"help": "qa_mode 'separate': the most questions (rows) "
                                                                    "sharing one context encoding."})
    eval_qa_mode: str | None = field(default=None, metadata={"help": "QA mode of the held-out monitor set (default: "
                                                                     "qa_mode; e.g. 'multi' to keep a curve comparable)."})
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
                                                           "the context in its prompt, or both; '+contrastive' adds "
                                                           "the in-batch contrastive term."})
    contrastive_weight: float = field(default=1.0, metadata={
        "help": "'...+contrastive': weight of InfoNCE over the batch's adapters (each answer under its own context's "
                "adapter against other contexts' adapters; `losses.contrastive_nce`). Needs >= 2 contexts a batch."})
    contrastive_temperature: float = field(default=1.0, metadata={
        "help": "'...+contrastive': temperature of the scores (mean answer NLL per token)."})
    contrastive_negatives: int = field(default=2, metadata={
        "help": "'...+contrastive': other adapters each conversation is scored under (the answer pass then runs "
                "1 + this many times the batch, in one batched pass)."})
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
    eval_discrimination: bool = field(default=True, metadata={
        "help": "Also report, at evaluation, the own-adapter top-1 rate among the held-out contexts' adapters, its "
                "margin, and the adapters' mean pairwise cosine (`training.monitor`)."})
    eval_discrimination_contexts: int = field(default=16, metadata={
        "help": "eval_discrimination: the held-out contexts (per process) scored under each other's adapters; the "
                "cost is this number squared answer passes, whatever the size of the held-out set."})
    eval_controls: bool = field(default=True, metadata={"help": "Also report the no-adapter and wrong-context "
                                                                "losses at evaluation."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep False for SHINE."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "Every trainable hypernetwork tensor is used in each step, so DDP needs no unused-parameter search."})

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage must be one of {STAGES}, got {self.stage!r}.")
        for name in ("qa_mode", "eval_qa_mode"):
            if getattr(self, name) not in (*QA_MODES, *((None,) if name == "eval_qa_mode" else ())):
                raise ConfigError(f"{name} must be one of {QA_MODES}, got {getattr(self, name)!r}.")
        if self.eval_discrimination_contexts < 2:
            raise ConfigError(f"eval_discrimination_contexts must be at least 2 (or eval_discrimination: false), got "
                              f"{self.eval_discrimination_contexts}.")
        if self.qa_mode == "separate" and (self.distills or self.questions_per_example < 1):
            raise ConfigError("qa_mode 'separate' trains on gold answers with questions_per_example >= 1: use "
                              "objective 'ce' or 'ce+contrastive' (teacher targets follow multi/single conversations).")
        if not 0.0 < self.min_completion_keep <= self.max_completion_keep <= 1.0:
            raise ConfigError("Need 0 < min_completion_keep <= max_completion_keep <= 1.")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
        if self.kd_top_k < 1 or self.hidden_layers < 1 or self.contrastive_negatives < 1 \
                or min(self.kd_weight, self.ce_weight, self.hidden_weight, self.contrastive_weight) < 0:
            raise ConfigError("Need kd_top_k >= 1, hidden_layers >= 1, contrastive_negatives >= 1 and non-negative "
                             "loss weights.")
        if not self.contrastive_temperature > 0:
            raise ConfigError(f"contrastive_temperature must be positive, got {self.contrastive_temperature}.")
        if min(self.max_context_length, self.max_conversation_length) < 1:
            raise ConfigError("max_context_length and max_conversation_length must be positive.")
        if self.chunk_tokens is not None:
            check_chunked_arguments(self)
        super().__post_init__()

    @property
    def base_objective(self) -> str:
        """The objective without its ``+contrastive`` suffix."""
        return self.objective.removesuffix(CONTRASTIVE)

    @property
    def distills(self) -> bool:
        """Whether the objective has a distillation term (the data then carries teacher targets)."""
        return self.base_objective != "ce"

    @property
    def hidden_matching_weight(self) -> float:
        """Weight of the hidden-state matching term (0 unless the objective has ``+hidden``)."""
        return self.hidden_weight if self.base_objective.endswith("+hidden") else 0.0

    def loss_weights(self, num_base_layers: int) -> LossWeights:
        """The `losses.LossWeights` of `ShineModel.forward` for this objective on a base of ``num_base_layers``."""
        objective = self.base_objective
        with_ce = objective in ("ce", "kd+ce", "kd+ce+hidden")
        hidden = self.hidden_matching_weight
        return LossWeights(ce=self.ce_weight if with_ce else 0.0, kd=0.0 if objective == "ce" else self.kd_weight,
                           hidden=hidden,
                           contrastive=self.contrastive_weight if self.objective.endswith(CONTRASTIVE) else 0.0,
                           temperature=self.contrastive_temperature, negatives=self.contrastive_negatives,
                           hidden_layers=tuple(hidden_layer_indices(num_base_layers, self.hidden_layers))
                           if hidden else ())


