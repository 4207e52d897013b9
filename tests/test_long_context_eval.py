"""Long-context evaluation: padded SQuAD, the needle test, chunked adapters in `run_evaluation`, the length report."""

from __future__ import annotations

import argparse
import json

import pytest

from conftest import make_shine
from peft_shine import ContextError
from peft_shine.adapters.pipeline import ChunkingConfig
from peft_shine.evaluation import load_qa_records, run_evaluation
from peft_shine.evaluation.long_context import (
    NEEDLES,
    SEPARATOR,
    length_of,
    needle_records,
    padded_squad_records,
    records_for_cli,
)
from peft_shine.evaluation.long_context_report import main as report_main
from peft_shine.evaluation.long_context_report import summarize_by_length


pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path` was renamed")]


@pytest.fixture(scope="module")
def squad():
    return load_qa_records("squad", limit=9, seed=0)


def _tokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_padded_squad_holds_the_gold_paragraph_once_among_other_articles(tokenizer, squad):
    padded = padded_squad_records(squad, 3000, tokenizer, seed=0)
    titles = {}
    for record in load_qa_records("squad") + load_qa_records("squad", split="train"):
        titles[record.context] = record.title
    positions = []
    for original, record in zip(squad, padded):
        paragraphs = record.context.split(SEPARATOR)
        assert paragraphs.count(original.context) == 1 and len(paragraphs) > 1
        assert all(titles[p] != original.title for p in paragraphs if p != original.context)  # other articles only
        assert 2000 < _tokens(tokenizer, record.context) <= 3000 + _tokens(tokenizer, original.context)
        assert (record.question, record.answers, length_of(record.id)) == (original.question, original.answers, 3000)
        index = paragraphs.index(original.context)
        position = record.id.rsplit(":", 1)[1]
        assert {"start": index == 0, "end": index == len(paragraphs) - 1,
                "middle": 0 < index < len(paragraphs) - 1}[position]
        positions.append(position)
    assert set(positions) == {"start", "middle", "end"}  # the gold position varies
    same = [r for r, o in zip(padded, squad) if o.context == squad[0].context]
    assert len({r.context for r in same}) == 1  # questions of one paragraph share its padded context


def test_needle_is_planted_once_at_each_depth_and_length(tokenizer):
    records = needle_records(tokenizer, 300, multiples=(1, 4), depths=(0.0, 0.5, 1.0))
    assert len(records) == 2 * 3 * len(NEEDLES)
    for record in records:
        fact, question, answer = next(n for n in NEEDLES if n[1] == record.question)
        paragraphs = record.context.split(SEPARATOR)
        assert paragraphs.count(fact) == 1 and record.answers == (answer,)
        length = length_of(record.id)
        assert length in (300, 1200) and 0.6 * length < _tokens(tokenizer, record.context) <= length
        depth = float(record.id.rsplit(":d", 1)[1])
        where = paragraphs.index(fact) / max(1, len(paragraphs) - 1)
        assert abs(where - depth) <= 0.5 if length == 300 else abs(where - depth) < 0.1


def test_evaluation_with_chunked_adapters_reads_contexts_longer_than_the_window(tmp_path, squad, tokenizer):
    shine = make_shine("llama", max_context_length=256)
    records = padded_squad_records(squad[:4], 700, tokenizer, seed=0)
    conditions = ["adapter", "question_only", "wrong_context"]
    with pytest.raises(ContextError, match="max_context_length"):
        run_evaluation(shine, records, conditions, tmp_path / "plain", progress=False, max_new_tokens=2)
    results = run_evaluation(shine, records, conditions, tmp_path / "chunked", progress=False, max_new_tokens=2,
                             adapter_batch_size=2, chunking=ChunkingConfig(chunk_tokens=200, combine="mean"))
    assert results["settings"]["chunking"] == {"chunk_tokens": 200, "overlap_tokens": 0, "combine": "mean",
                                               "rank": None, "max_document_tokens": 131_072}
    assert {row["condition"] for row in results["predictions"]} == set(conditions)
    assert shine.peft_model is None  # the chunked adapters were removed afterwards
    with pytest.raises(ValueError, match="other settings"):  # chunking is part of what a resumed run must match
        run_evaluation(shine, records, conditions, tmp_path / "chunked", progress=False, max_new_tokens=2,
                       chunking=ChunkingConfig(chunk_tokens=200, combine="cat"))


def test_cli_builds_padded_and_needle_records(tokenizer):
    shine = make_shine("llama")
    base = {"split": None, "limit": 3, "seed": 0, "needle_multiples": "1,2", "chunk_tokens": 100,
            "chunk_overlap": 10, "chunk_combine": "svd", "chunk_rank": 4}
    records, chunking = records_for_cli(argparse.Namespace(data="squad", pad_tokens="900,1800", **base), shine)
    assert [length_of(r.id) for r in records] == [900] * 3 + [1800] * 3
    assert chunking == ChunkingConfig(100, 10, "svd", 4)
    records, _ = records_for_cli(argparse.Namespace(data="needle", pad_tokens="", **base), shine)
    assert sorted({length_of(r.id) for r in records}) == [100, 200]


def test_bundled_musique_is_evaluated_with_chunked_adapters(tmp_path):
    shine = make_shine("llama", max_context_length=256)
    base = {"split": None, "limit": 2, "seed": 0, "pad_tokens": "", "needle_multiples": "1", "chunk_tokens": 200,
            "chunk_overlap": 0, "chunk_combine": "mean", "chunk_rank": None}
    records, chunking = records_for_cli(argparse.Namespace(data="musique", **base), shine)
    assert len(records) == 2 and {r.source for r in records} == {"musique-ans-v1.0"}
    assert all(r.context.count(SEPARATOR) >= 8 and _tokens(shine.tokenizer, r.context) > 256 for r in records)
    results = run_evaluation(shine, records, ["adapter", "wrong_context"], tmp_path / "musique", progress=False,
                             max_new_tokens=2, adapter_batch_size=2, chunking=chunking)
    assert sorted((row["condition"], row["id"]) for row in results["predictions"]) == sorted(
        (condition, r.id) for condition in ("adapter", "wrong_context") for r in records)


def test_length_report_groups_predictions_by_data_length_and_condition(tmp_path):
    rows = [{"id": "a@512:start", "condition": "adapter", "f1": 1.0, "em": 1.0, "context_sha256": "x"},
            {"id": "b@512:end", "condition": "adapter", "f1": 0.0, "em": 0.0, "context_sha256": "y"},
            {"id": "a@1024:start", "condition": "adapter", "f1": 0.5, "em": 0.0, "context_sha256": "z"},
            {"id": "h1", "condition": "in_context", "f1": 1.0, "em": 1.0, "context_sha256": "w", "prompt_tokens": 900}]
    results = {"metadata": {"data": "squad"}, "predictions": rows}
    summary = summarize_by_length([results], {"w": 900})
    assert summary[("squad", 512)]["adapter"] == {"f1": 50.0, "em": 50.0, "n": 2}
    assert summary[("squad", 1024)]["adapter"]["f1"] == 50.0 and summary[("squad", 1024)]["in_context"]["n"] == 1
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text(json.dumps(results))
    table = report_main([str(tmp_path / "run"), "--plot", str(tmp_path / "plot.png"), "--markdown",
                         str(tmp_path / "table.md")])
    assert "| squad | ≤512 | 2 | 50.0 (50.0) |" in table
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "table.md").read_text() == table


def test_length_report_reads_the_predictions_of_an_unfinished_run(tmp_path):
    row = {"id": "a@512:start", "condition": "adapter", "f1": 1.0, "em": 0.0, "context_sha256": "x"}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "predictions.jsonl").write_text(json.dumps(row) + "\n" + '{"id": "cut sh')
    table = report_main([str(tmp_path / "run"), "--conditions", "adapter"])
    assert "| run (partial) | ≤512 | 1 | 100.0 (0.0) |" in table
