"""The recall conditions: ROUGE-L, the recall plan (stage-1 prompt, one task per context), and a tiny end-to-end run
through the harness and the CLI (rows, report, resume)."""

from __future__ import annotations

import json
import random

import pytest

from conftest import make_shine
from peft_shine import cli
from peft_shine.evaluation import (
    CONDITIONS,
    RECALL_CONDITIONS,
    QARecord,
    aggregate,
    lcs_length,
    markdown_table,
    plan_tasks,
    resolve_conditions,
    rouge_l,
    run_evaluation,
    score_recall,
    token_f1,
    wrong_context_map,
)
from peft_shine.evaluation import runner as runner_module
from peft_shine.evaluation.conditions import RECALL_MARGIN, SHINE, context_id, distinct_contexts
from peft_shine.evaluation.runner import RunOptions, plan_chunks
from peft_shine.prompting import ANSWER_SYSTEM_PROMPT, build_instruction_prompt
from peft_shine.training.data import RECONSTRUCTION_INSTRUCTION, conversation_turns


pytestmark = pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path` was renamed")

RECALL = list(RECALL_CONDITIONS)
QA = [("Paris is the capital of France.", "What is the capital of France?", "Paris"),
      ("Paris is the capital of France.", "Which country is Paris in?", "France"),
      ("Berlin is in Germany.\nIt is large.", "Where is Berlin?", "Germany"),
      ("Rome has the Colosseum.", "What does Rome have?", "the Colosseum")]
RECORDS = [QARecord(f"q{i}", "squad-v1.1-dev", "T", c, q, (a,)) for i, (c, q, a) in enumerate(QA)]
CAP = 45  # binds for the two longer contexts (31 and 34 characters = tokens, + 16), not for the 23-character one
RUN = {"batch_size": 2, "adapter_batch_size": 2, "max_new_tokens": 4, "recall_max_new_tokens": CAP,
       "progress": False}


# ---------------------------------------------------------------------------------------------- metrics


def _lcs_table(first, second) -> int:
    table = [[0] * (len(second) + 1) for _ in range(len(first) + 1)]
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_lcs_length_matches_the_textbook_recurrence():
    rng = random.Random(0)
    for _ in range(300):
        first = [rng.choice("abcd") for _ in range(rng.randint(0, 40))]
        second = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(first, second) == _lcs_table(first, second)


def test_rouge_l_on_a_hand_computed_example():
    # normalised: [cat, sat, on, mat, today] vs [cat, lay, on, mat]; LCS = cat on mat = 3
    # precision 3/5, recall 3/4, F = 2 · 0.6 · 0.75 / 1.35 = 2/3
    assert rouge_l("The cat sat on the mat, today!", "A cat lay on a mat.") == pytest.approx(2 / 3)
    # order matters for ROUGE-L, not for token F1
    assert rouge_l("mat on cat", "cat on mat") == pytest.approx(1 / 3)
    assert token_f1("mat on cat", "cat on mat") == 1.0
    assert rouge_l("", "") == 1.0 and rouge_l("the", "cat") == 0.0


def test_an_exact_repeat_scores_100_and_an_unrelated_text_low():
    context = "Berlin is in Germany.\nIt is the capital, and it has 3.7 million inhabitants."
    exact = score_recall(f"<|im_start|>{context}<|im_end|>", context)
    assert exact["prediction"] == context  # the whole text, not its first line
    assert (exact["em"], exact["f1"], exact["rouge_l"]) == (1.0, 1.0, 1.0)
    unrelated = score_recall("Photosynthesis turns light, water and carbon dioxide into sugar.", context)
    assert unrelated["rouge_l"] < 0.1 and unrelated["f1"] < 0.1 and unrelated["em"] == 0.0
    assert aggregate([exact, unrelated]) == {"em": 50.0, "f1": pytest.approx(50.0 + 50 * unrelated["f1"]),
                                             "rouge_l": pytest.approx(50.0 + 50 * unrelated["rouge_l"]), "n": 2}
    assert "rouge_l" not in aggregate([exact, {"em": 1.0, "f1": 1.0}])


# ---------------------------------------------------------------------------------------------- the plan


def test_recall_names_resolve_outside_all():
    assert resolve_conditions("recall") == RECALL
    assert resolve_conditions("all") == list(CONDITIONS)
    assert resolve_conditions("adapter,recall_base,recall") == ["adapter", "recall_base", *RECALL[:2]]
    with pytest.raises(ValueError, match="unknown condition 'recall_sft'.*'recall'"):
        resolve_conditions("recall_sft")


def test_plan_has_one_stage1_prompt_per_distinct_context(tokenizer):
    tasks = plan_tasks(RECORDS, ["wrong_context", *RECALL], tokenizer, seed=0, recall_max_new_tokens=CAP)
    contexts = distinct_contexts(RECORDS)
    wrong = wrong_context_map(contexts, 0)
    prompt = build_instruction_prompt(tokenizer, RECONSTRUCTION_INSTRUCTION)
    (turn_ids, labels), = conversation_turns(tokenizer, [{"role": "user", "content": RECONSTRUCTION_INSTRUCTION},
                                                         {"role": "assistant", "content": contexts[0]}])
    stage1_prompt = turn_ids[:next(i for i, label in enumerate(labels) if label != -100)]
    assert tokenizer(prompt, add_special_tokens=False).input_ids == stage1_prompt
    assert RECONSTRUCTION_INSTRUCTION in prompt and ANSWER_SYSTEM_PROMPT not in prompt and "system" not in prompt
    for name in RECALL:
        recall = [t for t in tasks if t.condition == name]
        assert [t.record.context for t in recall] == contexts
        assert len({t.key for t in recall}) == len(contexts)
        for task in recall:
            context = task.record.context
            assert task.prompt == prompt and context not in task.prompt
            assert task.record.answers == (context,) and task.record.question == RECONSTRUCTION_INSTRUCTION
            assert task.record.id == f"recall-{context_id(context)[:16]}"
            size = len(tokenizer(context, add_special_tokens=False).input_ids)
            assert task.max_new_tokens == min(size + RECALL_MARGIN, CAP)
            expected = {"recall_adapter": context, "recall_wrong_context": wrong[context], "recall_base": None}[name]
            assert task.adapter_context == expected
            assert task.adapter_kind == (None if expected is None else SHINE)
    qa_wrong = {t.record.context: t.adapter_context for t in tasks if t.condition == "wrong_context"}
    assert qa_wrong == {c: wrong[c] for c in contexts}  # the recall control uses the QA control's adapters


def test_recall_tasks_share_the_qa_adapters_and_batch_by_budget(tokenizer):
    tasks = plan_tasks(RECORDS, ["adapter", *RECALL], tokenizer, recall_max_new_tokens=CAP)
    chunks = plan_chunks(tasks, RunOptions(batch_size=2, adapter_batch_size=3))
    assert [c.kind for c in chunks] == [None, SHINE]
    assert set(chunks[1].contexts) == set(distinct_contexts(RECORDS))
    base_batches = [[t.max_new_tokens for t in b] for b in chunks[0].batches]
    assert base_batches == [sorted(t.max_new_tokens for t in tasks if t.condition == "recall_base")[i:i + 2]
                            for i in (0, 2)]


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def shine():
    return make_shine()


@pytest.fixture(scope="module")
def recall_run(shine, tmp_path_factory):
    output = tmp_path_factory.mktemp("recall")
    budgets = []
    answer = runner_module.generate_answers

    def recording(model, tokenizer, prompts, names=None, max_new_tokens=32):
        budgets.append(max_new_tokens)
        return answer(model, tokenizer, prompts, names, max_new_tokens)

    runner_module.generate_answers = recording
    try:
        results = run_evaluation(shine, RECORDS, ["adapter", *RECALL], output, **RUN)
    finally:
        runner_module.generate_answers = answer
    return results, output, budgets


def test_run_writes_scored_recall_rows_and_reports(recall_run, tokenizer):
    results, output, budgets = recall_run
    contexts = {context_id(c): c for c in distinct_contexts(RECORDS)}
    assert list(results["aggregates"]) == ["adapter", *RECALL]
    assert results["settings"]["recall"] == {"instruction": RECONSTRUCTION_INSTRUCTION, "margin": RECALL_MARGIN,
                                             "max_new_tokens": CAP}
    for name in RECALL:
        rows = [r for r in results["predictions"] if r["condition"] == name]
        assert sorted(r["context_sha256"] for r in rows) == sorted(contexts)
        for row in rows:
            scores = score_recall(row["generation"], contexts[row["context_sha256"]])
            assert {k: row[k] for k in scores} == scores
        assert {k: results["aggregates"][name][k] for k in ("em", "f1", "rouge_l", "n")} == aggregate(rows)
    assert "rouge_l" not in results["aggregates"]["adapter"]
    assert max(budgets) == CAP and 4 in budgets  # recall batches up to the cap, QA batches at max_new_tokens
    markdown = (output / "results.md").read_text()
    assert "| condition | n | F1 | EM | ROUGE-L |" in markdown and "| `recall_base` | 3 |" in markdown
    assert "Repeat the text." in markdown
    assert (output / "results.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((output / "results.json").read_text()) == json.loads(json.dumps(results))
    assert "ROUGE-L" not in markdown_table({"adapter": results["aggregates"]["adapter"]})


def _fail(*args, **kwargs):
    raise AssertionError("a finished run must not generate anything")


def test_rerun_recomputes_nothing(shine, recall_run, monkeypatch):
    results, output, _ = recall_run
    monkeypatch.setattr(runner_module, "generate_answers", _fail)
    monkeypatch.setattr(shine, "generate_adapter", _fail)
    again = run_evaluation(shine, RECORDS, ["adapter", *RECALL], output, **RUN)
    assert again["predictions"] == results["predictions"]
    qa_only = run_evaluation(shine, RECORDS, ["adapter"], output, **RUN)  # a QA-only run resumes the folder
    assert qa_only["predictions"] == results["predictions"][:len(RECORDS)]
    with pytest.raises(ValueError, match="recall: .* then, .* now"):
        run_evaluation(shine, RECORDS, RECALL, output, **{**RUN, "recall_max_new_tokens": CAP + 1})


def test_recall_is_added_to_a_folder_of_qa_results(shine, tmp_path):
    run_evaluation(shine, RECORDS, ["question_only"], tmp_path, **RUN)
    assert "recall" not in json.loads((tmp_path / "settings.json").read_text())
    results = run_evaluation(shine, RECORDS, ["question_only", "recall_base"], tmp_path, **RUN)
    assert results["aggregates"]["recall_base"]["n"] == 3
    assert json.loads((tmp_path / "settings.json").read_text())["recall"]["max_new_tokens"] == CAP


def test_cli_eval_recall_conditions(tmp_path, monkeypatch, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in RECORDS))
    monkeypatch.setattr("peft_shine.cli.eval.load_for_eval", lambda name, base, **options: (make_shine(), "tiny"))
    out = tmp_path / "out"
    code = cli.main(["eval", "--data", str(data), "--limit", "3", "--seed", "0", "--conditions", ",".join(RECALL),
                     "--output", str(out), "--recall-max-new-tokens", "12", "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    contexts = results["metadata"]["num_contexts"]
    assert 2 <= contexts <= 3 and all(results["aggregates"][name]["n"] == contexts for name in RECALL)
    assert results["settings"]["recall"]["max_new_tokens"] == 12
    assert "ROUGE-L" in capsys.readouterr().out
