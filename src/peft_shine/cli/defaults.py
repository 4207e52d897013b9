"""The library values the command-line parsers show, kept here so that building the parser imports nothing
heavy (``shine --help`` must not load torch). ``tests/test_cli.py`` checks each against the library's own value."""

from __future__ import annotations


DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # peft_shine.base_models.DEFAULT_BASE_MODEL
DEFAULT_HUB_REPO = "peft-shine/shine-smollm2-135m-instruct"  # peft_shine.shipped.DEFAULT_HUB_REPO
DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")  # peft_shine.loading.DTYPES
SPREAD = "auto-map"  # peft_shine.loading.SPREAD
OBJECTIVES = ("ce", "kd", "kd+ce", "kd+hidden", "kd+ce+hidden", "ce+contrastive", "kd+contrastive",  # training.
              "kd+ce+contrastive", "kd+hidden+contrastive", "kd+ce+hidden+contrastive")  # arguments.OBJECTIVES
# peft_shine.evaluation.conditions: CONDITIONS, DEFAULT_CONDITIONS, RECALL_CONDITIONS and the recall budget
CONDITIONS = ("adapter", "question_only", "in_context", "sft", "wrong_context", "adapter+context")
DEFAULT_CONDITIONS = ("adapter", "question_only", "in_context", "sft", "wrong_context")
RECALL_CONDITIONS = ("recall_adapter", "recall_wrong_context", "recall_base")
DEFAULT_RECALL_MAX_NEW_TOKENS = 512
RECALL_MARGIN = 16
