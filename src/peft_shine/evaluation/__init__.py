"""Evaluation: answer extraction, SQuAD / HotpotQA metrics, QA data and the evaluation harness (docs/evaluation.md)."""

from __future__ import annotations

from peft_shine.evaluation.conditions import (
    CONDITIONS,
    DEFAULT_CONDITIONS,
    KNOWN_CONDITIONS,
    RECALL_CONDITIONS,
    Condition,
    Task,
    derangement,
    plan_tasks,
    resolve_conditions,
    wrong_context_map,
)
from peft_shine.evaluation.harness import run_evaluation
from peft_shine.evaluation.metrics import (
    aggregate,
    best_score,
    exact_match,
    extract_answer,
    hotpot_f1,
    lcs_length,
    normalize_answer,
    rouge_l,
    score_example,
    score_generation,
    score_recall,
    token_f1,
    uses_hotpot_rule,
)
from peft_shine.evaluation.report import format_markdown, markdown_table, plot_results, write_reports
from peft_shine.evaluation.sft import SFTConfig, train_sft_adapter
from peft_shine.qa_data import (
    BUNDLED_QA_FILES,
    QARecord,
    available_bundled,
    bundled_path,
    group_contexts,
    held_out_split,
    load_qa_records,
    load_sample_context,
    sample_indices,
)


__all__ = [
    "BUNDLED_QA_FILES",
    "CONDITIONS",
    "DEFAULT_CONDITIONS",
    "KNOWN_CONDITIONS",
    "RECALL_CONDITIONS",
    "Condition",
    "QARecord",
    "SFTConfig",
    "Task",
    "aggregate",
    "available_bundled",
    "best_score",
    "bundled_path",
    "derangement",
    "exact_match",
    "extract_answer",
    "format_markdown",
    "group_contexts",
    "held_out_split",
    "hotpot_f1",
    "lcs_length",
    "load_qa_records",
    "load_sample_context",
    "markdown_table",
    "normalize_answer",
    "plan_tasks",
    "plot_results",
    "resolve_conditions",
    "rouge_l",
    "run_evaluation",
    "sample_indices",
    "score_example",
    "score_generation",
    "score_recall",
    "token_f1",
    "train_sft_adapter",
    "uses_hotpot_rule",
    "write_reports",
    "wrong_context_map",
]
