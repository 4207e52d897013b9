"""Every evaluation condition on a few held-out SQuAD questions with the real SmolLM2-135M-Instruct (untrained
hypernetwork: the test checks the harness, not the quality)."""

from __future__ import annotations

import pytest

from peft_shine import ShineModel
from peft_shine.evaluation import (
    CONDITIONS,
    SFTConfig,
    aggregate,
    extract_answer,
    load_qa_records,
    run_evaluation,
    score_example,
)
from peft_shine.evaluation import runner as runner_module
from peft_shine.evaluation.conditions import context_id, distinct_contexts
from peft_shine.storage.base_models import load_base_model


pytestmark = pytest.mark.integration

RUN = {"batch_size": 4, "max_new_tokens": 10, "sft": SFTConfig(steps=2), "progress": False}


def untimed(rows):
    return [{k: v for k, v in row.items() if k not in ("adapter_seconds", "answer_seconds")} for row in rows]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def shine():
    base, tokenizer = load_base_model()
    return ShineModel.from_base_model(base, tokenizer)


@pytest.fixture(scope="module")
def records():
    records = load_qa_records("squad", limit=3, seed=0)
    assert len(distinct_contexts(records)) >= 2
    return records


@pytest.fixture(scope="module")
def evaluation(shine, records, tmp_path_factory):
    output = tmp_path_factory.mktemp("eval")
    return run_evaluation(shine, records, "all", output, **RUN), output


def test_every_condition_answers_every_question(evaluation, records, shine):
    results, output = evaluation
    assert list(results["aggregates"]) == list(CONDITIONS)
    assert [(r["condition"], r["id"]) for r in results["predictions"]] == [
        (name, record.id) for name in CONDITIONS for record in records]
    assert all(row["generation"].strip() for row in results["predictions"])
    assert {p.name for p in output.iterdir()} >= {"results.json", "results.md", "results.png", "predictions.jsonl"}
    assert shine.peft_model is None  # every evaluation adapter was deleted


def test_scores_are_computed_from_the_predictions(evaluation):
    results, _ = evaluation
    for row in results["predictions"]:
        assert row["prediction"] == extract_answer(row["generation"])
        expected = score_example(row["prediction"], row["answers"], row["source"])
        assert (row["em"], row["f1"]) == (expected["em"], expected["f1"])
    for name, agg in results["aggregates"].items():
        assert {k: agg[k] for k in ("em", "f1", "n")} == aggregate(
            [r for r in results["predictions"] if r["condition"] == name])
    aggregates = results["aggregates"]
    assert aggregates["in_context"]["prompt_tokens"] > aggregates["question_only"]["prompt_tokens"]
    assert aggregates["adapter"]["prompt_tokens"] == aggregates["question_only"]["prompt_tokens"]


def test_wrong_context_uses_another_contexts_adapter_and_sft_is_timed(evaluation, records):
    results, _ = evaluation
    contexts = {context_id(r.context) for r in records}
    for row in results["predictions"]:
        if row["condition"] == "wrong_context":
            assert row["adapter_context_sha256"] != row["context_sha256"]
            assert row["adapter_context_sha256"] in contexts
        if row["condition"] == "sft":
            assert row["adapter_context_sha256"] == row["context_sha256"] and row["adapter_seconds"] > 0
    assert results["aggregates"]["sft"]["adapter_seconds"] > 0
    assert results["aggregates"]["adapter"]["adapter_seconds"] > 0


def test_a_fresh_run_gives_the_same_predictions(evaluation, shine, records, tmp_path):
    results, _ = evaluation
    again = run_evaluation(shine, records, ["question_only", "adapter"], tmp_path, **RUN)
    first = [r for r in results["predictions"] if r["condition"] in ("question_only", "adapter")]
    assert sorted(untimed(again["predictions"]), key=str) == sorted(untimed(first), key=str)


def test_resume_skips_finished_work(evaluation, shine, records, monkeypatch):
    results, output = evaluation

    def fail(*args, **kwargs):
        raise AssertionError("finished work was recomputed")

    monkeypatch.setattr(runner_module, "generate_answers", fail)
    monkeypatch.setattr(runner_module, "train_sft_adapter", fail)
    monkeypatch.setattr(shine, "generate_adapter", fail)
    assert run_evaluation(shine, records, "all", output, **RUN)["predictions"] == results["predictions"]
