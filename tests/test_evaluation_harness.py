"""The evaluation harness on a tiny random LM: every condition, scoring, reports, resume, cleanup, SFT and CLI."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_shine
from peft_shine import cli
from peft_shine.evaluation import (
    CONDITIONS,
    QARecord,
    SFTConfig,
    aggregate,
    extract_answer,
    markdown_table,
    run_evaluation,
    score_example,
    train_sft_adapter,
)
from peft_shine.evaluation import runner as runner_module
from peft_shine.evaluation.conditions import context_id
from peft_shine.evaluation.sft import reconstruction_batch
from peft_shine.evaluation.store import PredictionLog


pytestmark = pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path` was renamed")

QA = [("Paris is the capital of France.", "What is the capital of France?", "Paris"),
      ("Paris is the capital of France.", "Which country is Paris in?", "France"),
      ("Berlin is in Germany.", "Where is Berlin?", "Germany"),
      ("Rome has the Colosseum.", "What does Rome have?", "the Colosseum")]
RECORDS = [QARecord(f"q{i}", "squad-v1.1-dev", "T", c, q, (a,)) for i, (c, q, a) in enumerate(QA)]
RUN = {"batch_size": 3, "adapter_batch_size": 2, "max_new_tokens": 4, "sft": SFTConfig(steps=2), "progress": False}
TIMING = ("adapter_seconds", "answer_seconds")


def untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def shine():
    return make_shine()


@pytest.fixture(scope="module")
def reference(shine, tmp_path_factory):
    base_state = {k: v.clone() for k, v in shine.base_lm.state_dict().items()}
    output = tmp_path_factory.mktemp("reference")
    results = run_evaluation(shine, RECORDS, "all", output, **RUN)
    return results, output, base_state


def test_results_structure_and_files(reference):
    results, output, _ = reference
    assert set(results) == {"settings", "metadata", "conditions", "aggregates", "predictions"}
    assert list(results["aggregates"]) == list(CONDITIONS)
    assert len(results["predictions"]) == len(CONDITIONS) * len(RECORDS)
    assert results["metadata"]["num_questions"] == 4 and results["metadata"]["num_contexts"] == 3
    assert json.loads((output / "results.json").read_text()) == json.loads(json.dumps(results))
    assert (output / "results.png").read_bytes().startswith(b"\x89PNG")
    markdown = (output / "results.md").read_text()
    assert all(f"| `{name}` | 4 |" in markdown for name in CONDITIONS)
    assert len((output / "predictions.jsonl").read_text().splitlines()) == len(results["predictions"])


def test_scores_and_aggregates_follow_from_predictions(reference):
    results, _, _ = reference
    for row in results["predictions"]:
        assert row["prediction"] == extract_answer(row["generation"])
        scores = score_example(row["prediction"], row["answers"], row["source"])
        assert (row["em"], row["f1"]) == (scores["em"], scores["f1"])
    for name, agg in results["aggregates"].items():
        rows = [r for r in results["predictions"] if r["condition"] == name]
        assert {k: agg[k] for k in ("em", "f1", "n")} == aggregate(rows)
        assert agg["answer_seconds"] > 0
        has_adapter = CONDITIONS[name].adapter is not None
        assert (agg["adapter_seconds"] is not None and agg["adapter_seconds"] > 0) == has_adapter
        assert agg["num_adapters"] == (3 if has_adapter else 0)


def test_adapter_provenance_per_condition(reference):
    results, _, _ = reference
    contexts = {context_id(r.context) for r in RECORDS}
    for row in results["predictions"]:
        own, used = row["context_sha256"], row["adapter_context_sha256"]
        if row["condition"] in ("question_only", "in_context"):
            assert used is None
        elif row["condition"] == "wrong_context":
            assert used != own and used in contexts
        else:
            assert used == own
    sft_seconds = {r["adapter_seconds"] for r in results["predictions"] if r["condition"] == "sft"}
    shine_seconds = {r["adapter_seconds"] for r in results["predictions"] if r["condition"] == "adapter"}
    assert len(sft_seconds) == 3 and all(s > 0 for s in sft_seconds | shine_seconds)


def test_adapters_are_removed_and_the_base_is_untouched(shine, reference):
    _, _, base_state = reference
    assert shine.peft_model is None and not getattr(shine, "adapter_info", {})
    assert not any("lora" in name for name, _ in shine.base_lm.named_modules())
    assert all(torch.equal(v, base_state[k]) for k, v in shine.base_lm.state_dict().items())


def test_rerun_of_a_finished_run_computes_nothing(shine, reference, monkeypatch):
    results, output, _ = reference
    monkeypatch.setattr(runner_module, "generate_answers", _fail)
    monkeypatch.setattr(shine, "generate_adapter", _fail)
    again = run_evaluation(shine, RECORDS, "all", output, **RUN)
    assert again["predictions"] == results["predictions"]


def _fail(*args, **kwargs):
    raise AssertionError("a finished run must not generate anything")


class Crash(Exception):
    pass


def test_interrupted_run_resumes_with_identical_results(shine, reference, tmp_path, monkeypatch):
    results, _, _ = reference
    append, calls = PredictionLog.append, []

    def crash_on_fifth_batch(self, rows):
        if len(calls) == 4:  # first batch of the first SHINE chunk: adapters exist at that point
            raise Crash
        calls.append(len(rows))
        append(self, rows)

    monkeypatch.setattr(PredictionLog, "append", crash_on_fifth_batch)
    with pytest.raises(Crash):
        run_evaluation(shine, RECORDS, "all", tmp_path, **RUN)
    monkeypatch.setattr(PredictionLog, "append", append)
    assert shine.peft_model is None  # adapters cleaned up despite the crash
    log = tmp_path / "predictions.jsonl"
    assert len(log.read_text().splitlines()) == sum(calls) == 8 and not (tmp_path / "results.json").exists()
    with log.open("a") as handle:
        handle.write('{"condition": "adap')  # a write cut short by the crash
    generated = []
    answer = runner_module.generate_answers

    def counting(model, tokenizer, prompts, names=None, max_new_tokens=32):
        if max_new_tokens > 1:  # not the warm-up
            generated.extend(prompts)
        return answer(model, tokenizer, prompts, names, max_new_tokens)

    monkeypatch.setattr(runner_module, "generate_answers", counting)
    resumed = run_evaluation(shine, RECORDS, "all", tmp_path, **RUN)
    assert len(generated) == len(results["predictions"]) - 8
    assert untimed(resumed["predictions"]) == untimed(results["predictions"])
    assert len(log.read_text().splitlines()) == len(results["predictions"])


def test_resume_refuses_other_settings(shine, reference):
    _, output, _ = reference
    with pytest.raises(ValueError, match="max_new_tokens: 4 then, 5 now"):
        run_evaluation(shine, RECORDS, "all", output, **{**RUN, "max_new_tokens": 5})


def test_another_hypernetwork_reuses_baselines_and_redoes_shine_rows(shine, reference, tmp_path, monkeypatch):
    results, output, _ = reference
    for name in ("settings.json", "predictions.jsonl"):
        (tmp_path / name).write_bytes((output / name).read_bytes())
    other = make_shine()
    with torch.no_grad():
        next(other.m2p.parameters()).add_(0.5)  # other hypernetwork weights, same shapes and base
    generated = []
    answer = runner_module.generate_answers

    def counting(model, tokenizer, prompts, names=None, max_new_tokens=32):
        if max_new_tokens > 1:
            generated.extend(prompts)
        return answer(model, tokenizer, prompts, names, max_new_tokens)

    monkeypatch.setattr(runner_module, "generate_answers", counting)
    redone = run_evaluation(other, RECORDS, "all", tmp_path, **RUN)
    shine_conditions = {name for name, c in CONDITIONS.items() if c.adapter == "shine"}
    assert len(generated) == 4 * len(shine_conditions)  # only SHINE rows are answered again
    new_hash = redone["settings"]["hypernetwork_sha256"]
    assert new_hash != results["settings"]["hypernetwork_sha256"]
    assert json.loads((tmp_path / "settings.json").read_text())["hypernetwork_sha256"] == new_hash
    for old, new in zip(untimed(results["predictions"]), untimed(redone["predictions"])):
        if old["condition"] in shine_conditions:
            assert new["hypernetwork_sha256"] == new_hash
        else:
            assert new == old


def test_a_users_adapters_survive_the_evaluation(tmp_path):
    shine = make_shine()
    shine.generate_adapter("My own context.", adapter_names=["mine"])
    run_evaluation(shine, RECORDS[:3], ["adapter", "sft"], tmp_path, **RUN)
    assert list(shine.peft_model.peft_config) == ["mine"] and shine.peft_model.active_adapter == "mine"
    assert list(shine.adapter_info) == ["mine"]


def test_too_long_contexts_fail_before_any_work(tmp_path):
    shine = make_shine(max_context_length=24)
    with pytest.raises(ValueError, match="max_context_length"):
        run_evaluation(shine, RECORDS, ["question_only", "adapter"], tmp_path, **RUN)
    assert not list(tmp_path.iterdir())
    results = run_evaluation(shine, RECORDS, ["adapter"], tmp_path, truncation=True, **RUN)
    assert results["aggregates"]["adapter"]["n"] == 4


def test_sft_adapter_learns_the_reconstruction(tokenizer):
    shine = make_shine()
    context = "The quick brown fox."
    input_ids, labels = reconstruction_batch(tokenizer, context)
    answer = tokenizer(context, add_special_tokens=False).input_ids
    assert labels[0][labels[0] != -100].tolist() == answer + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    base_loss = shine.base_lm(input_ids=input_ids, labels=labels).loss.item()
    seconds = train_sft_adapter(shine, context, "sft-test", SFTConfig(steps=30, learning_rate=1e-2))
    model = shine.peft_model
    assert seconds > 0 and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        loss = model(input_ids=input_ids, labels=labels).loss.item()
    assert loss < 0.9 * base_loss


def test_markdown_table_marks_missing_adapter_time():
    agg = {"em": 12.5, "f1": 33.333, "n": 8, "answer_seconds": 0.5, "prompt_tokens": 40.4, "num_adapters": 0,
           "adapter_seconds": None}
    table = markdown_table({"question_only": agg})
    assert "| `question_only` | 8 | 33.3 | 12.5 | — | 0.50 | 40 |" in table


def test_cli_eval_on_a_jsonl_file(tmp_path, monkeypatch, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in RECORDS))
    monkeypatch.setattr("peft_shine.cli.eval.load_for_eval", lambda name, base, **options: (make_shine(), "tiny"))
    out = tmp_path / "out"
    code = cli.main(["eval", "--data", str(data), "--limit", "3", "--conditions", "adapter,question_only",
                     "--output", str(out), "--max-new-tokens", "3", "--no-progress", "--group-tokens", "40"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| `adapter` | 3 |" in printed and "results.md" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["metadata"]["group_tokens"] == 40 and results["metadata"]["limit"] == 3
    assert cli.main(["eval", "--conditions", "nope", "--output", str(out)]) == 2
    assert "unknown condition 'nope'" in capsys.readouterr().err
