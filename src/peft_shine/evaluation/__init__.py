"""Evaluation: answer extraction, SQuAD / HotpotQA metrics and QA data (shine-method.md §3)."""

from __future__ import annotations

from peft_shine.evaluation.metrics import (
    aggregate,
    best_score,
    exact_match,
    extract_answer,
    hotpot_f1,
    normalize_answer,
    score_example,
    token_f1,
    uses_hotpot_rule,
)
from peft_shine.evaluation.qa_data import (
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
    "QARecord",
    "aggregate",
    "available_bundled",
    "best_score",
    "bundled_path",
    "exact_match",
    "extract_answer",
    "group_contexts",
    "held_out_split",
    "hotpot_f1",
    "load_qa_records",
    "load_sample_context",
    "normalize_answer",
    "sample_indices",
    "score_example",
    "token_f1",
    "uses_hotpot_rule",
]
