"""Evaluation conditions, the task plan, the wrong-context derangement and the chunk/batch plan (no model calls)."""

from __future__ import annotations

import pytest

from peft_shine.evaluation import CONDITIONS, QARecord, derangement, plan_tasks, resolve_conditions, wrong_context_map
from peft_shine.evaluation.conditions import SFT, SHINE, context_id, distinct_contexts
from peft_shine.evaluation.runner import RunOptions, plan_chunks
from peft_shine.prompting import build_prompt


CONTEXTS = ["Paris is the capital of France.", "Berlin is in Germany.", "Rome has the Colosseum.",
            "Oslo is cold in winter."]


def make_records(n_contexts: int = 4, per_context: int = 2) -> list[QARecord]:
    return [QARecord(f"q{c}-{k}", "squad", f"t{c}", CONTEXTS[c], f"Question {k} about {c}?", (f"answer {c}",))
            for c in range(n_contexts) for k in range(per_context)]


def test_resolve_conditions_orders_dedupes_and_rejects_unknown():
    assert resolve_conditions("in_context, adapter,in_context") == ["in_context", "adapter"]
    assert resolve_conditions(["sft"]) == ["sft"]
    assert resolve_conditions("all") == list(CONDITIONS)
    with pytest.raises(ValueError, match="unknown condition 'adaptor'"):
        resolve_conditions("adaptor")
    with pytest.raises(ValueError, match="no condition"):
        resolve_conditions([])


@pytest.mark.parametrize("n", range(2, 12))
def test_derangement_is_a_seeded_permutation_without_fixed_points(n):
    for seed in range(4):
        perm = derangement(n, seed)
        assert sorted(perm) == list(range(n))
        assert all(perm[i] != i for i in range(n))
        assert perm == derangement(n, seed)


def test_derangement_needs_two_items():
    with pytest.raises(ValueError, match="at least two distinct contexts"):
        derangement(1)


def test_wrong_context_map_points_to_another_context_of_the_set():
    mapping = wrong_context_map(CONTEXTS, seed=3)
    assert set(mapping) == set(CONTEXTS) and set(mapping.values()) == set(CONTEXTS)
    assert all(source != target for source, target in mapping.items())


def test_plan_prompts_and_adapters_per_condition(tokenizer):
    records = make_records()
    tasks = plan_tasks(records, "all", tokenizer, seed=0)
    assert len(tasks) == len(CONDITIONS) * len(records)
    by = {(t.condition, t.record.id): t for t in tasks}
    wrong = wrong_context_map(distinct_contexts(records), 0)
    for record in records:
        adapter, question_only = by["adapter", record.id], by["question_only", record.id]
        assert adapter.prompt == question_only.prompt == build_prompt(tokenizer, record.question)
        assert by["in_context", record.id].prompt == build_prompt(tokenizer, record.question, record.context)
        assert by["adapter+context", record.id].prompt == by["in_context", record.id].prompt
        assert (adapter.adapter_kind, adapter.adapter_context) == (SHINE, record.context)
        assert (by["sft", record.id].adapter_kind, by["sft", record.id].adapter_context) == (SFT, record.context)
        assert question_only.adapter_kind is None and question_only.adapter_context is None
        control = by["wrong_context", record.id]
        assert control.adapter_kind == SHINE and control.adapter_context == wrong[record.context] != record.context
        assert control.key == ("wrong_context", record.id, context_id(record.context), context_id(wrong[record.context]))
        assert adapter.prompt_tokens == len(tokenizer(adapter.prompt, add_special_tokens=False).input_ids)


def test_plan_rejects_duplicate_ids_and_a_single_context_control(tokenizer):
    records = make_records(2, 1)
    with pytest.raises(ValueError, match="unique"):
        plan_tasks(records + records[:1], ["adapter"], tokenizer)
    with pytest.raises(ValueError, match="two distinct contexts"):
        plan_tasks(make_records(1, 3), ["adapter", "wrong_context"], tokenizer)
    assert len(plan_tasks(make_records(1, 3), ["adapter"], tokenizer)) == 3


def test_chunks_group_adapters_and_cover_every_task_once(tokenizer):
    tasks = plan_tasks(make_records(4, 3), "all", tokenizer, seed=1)
    chunks = plan_chunks(tasks, RunOptions(batch_size=4, adapter_batch_size=3))
    assert [c.kind for c in chunks] == [None, SHINE, SHINE, SFT, SFT]
    assert [len(c.contexts) for c in chunks] == [0, 3, 1, 3, 1]
    batched = [t for c in chunks for b in c.batches for t in b]
    assert sorted(t.key for t in batched) == sorted(t.key for t in tasks)
    for chunk in chunks:
        for batch in chunk.batches:
            assert 1 <= len(batch) <= 4 and len({t.condition for t in batch}) == 1
            assert all(t.adapter_kind == chunk.kind for t in batch)
            assert {t.adapter_context for t in batch if t.adapter_context} <= set(chunk.contexts)
    shine_batches = [b for c in chunks if c.kind == SHINE for b in c.batches]
    assert any(len({t.adapter_context for t in b}) > 1 for b in shine_batches)  # mixed-adapter batches
