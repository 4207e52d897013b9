"""QA records, the bundled samples, sampling, held-out splits and SQuAD-with-distractors grouping."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from peft_shine.evaluation import (
    BUNDLED_QA_FILES,
    QARecord,
    available_bundled,
    bundled_path,
    group_contexts,
    held_out_split,
    load_qa_records,
    load_sample_context,
)
from tiny_models import make_char_tokenizer


@pytest.fixture(scope="module")
def squad() -> list[QARecord]:
    return load_qa_records("squad")


@pytest.fixture(scope="module")
def char_tokenizer():
    return make_char_tokenizer()


def _record(index: int, title: str = "T", **overrides) -> dict:
    record = {
        "id": f"q{index}",
        "source": "test",
        "title": title,
        "context": f"context {index}",
        "question": f"question {index}?",
        "answers": [f"answer {index}"],
    }
    record.update(overrides)
    return record


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ bundled files


@pytest.mark.parametrize(
    ("name", "split", "count"),
    [("squad", None, 349), ("squad", "train", 220), ("hotpotqa", None, 30), ("musique", None, 30),
     ("nq_open", "validation", 50)],
)
def test_bundled_qa_files_load(name: str, split: str | None, count: int) -> None:
    records = load_qa_records(name, split=split)
    assert len(records) == count
    for record in records:
        assert record.answers and record.question and record.context
        yes_no = record.answers in (("yes",), ("no",))
        assert yes_no or any(answer.lower() in record.context.lower() for answer in record.answers)


def test_bundled_file_names_and_errors() -> None:
    assert load_qa_records("squad_train_sample.jsonl") == load_qa_records("squad", split="train")
    assert set(BUNDLED_QA_FILES.values()) <= set(available_bundled())
    assert bundled_path("wikitext_sample.jsonl").is_file()
    with pytest.raises(FileNotFoundError, match="squad_sample.jsonl"):
        bundled_path("nope.jsonl")
    with pytest.raises(FileNotFoundError, match="squad"):
        load_qa_records("no_such_dataset")
    with pytest.raises(ValueError, match="split"):
        load_qa_records("hotpotqa", split="train")


def test_held_out_and_train_samples_share_no_article(squad: list[QARecord]) -> None:
    train = load_qa_records("squad", split="train")
    assert {r.title for r in squad} == {"Normans", "Pharmacy", "Sky_(United_Kingdom)"}
    assert not {r.title for r in squad} & {r.title for r in train}
    assert not {r.context for r in squad} & {r.context for r in train}


def test_wikitext_and_sample_context() -> None:
    lines = bundled_path("wikitext_sample.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 300
    assert all({"id", "title", "text"} <= json.loads(line).keys() for line in lines)
    sample = load_sample_context()
    assert len(sample) == 4
    assert len({r.context for r in sample}) == 1
    assert 80 <= len(sample[0].context.split()) <= 160
    assert all(any(answer in r.context for answer in r.answers) for r in sample)


def test_bundled_readme_sha256_matches_files() -> None:
    readme = bundled_path("README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)` \| [\d,]+ \| \d+ \| `([0-9a-f]{64})` \|$", readme, flags=re.MULTILINE)
    assert {name for name, _ in rows} == set(available_bundled()) - {"README.md"}
    for name, digest in rows:
        assert hashlib.sha256(bundled_path(name).read_bytes()).hexdigest() == digest, name


# ------------------------------------------------------------------------------------------ validation


def test_record_missing_answers_names_the_field(tmp_path: Path) -> None:
    rows = [_record(0), _record(1), _record(2)]
    del rows[1]["answers"]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"#1 \(id 'q1'\).*'answers'.*expected") as error:
        load_qa_records(path)
    assert "answers (non-empty list of str)" in str(error.value)


def test_only_record_missing_answers(tmp_path: Path) -> None:
    row = _record(0)
    del row["answers"]
    with pytest.raises(ValueError, match="missing required field 'answers'"):
        load_qa_records(_write_jsonl(tmp_path / "one.jsonl", [row]))


def test_wrong_types_are_reported(tmp_path: Path) -> None:
    mixed = [_record(0), _record(1, answers="just a string")]
    with pytest.raises(ValueError, match=r"#1.*'answers'"):
        load_qa_records(_write_jsonl(tmp_path / "mixed.jsonl", mixed))
    with pytest.raises(ValueError, match=r"#0.*'answers' must be a non-empty list"):
        QARecord.from_dict(_record(0, answers=[]), index=0)
    with pytest.raises(ValueError, match=r"'question' must be a string"):
        QARecord.from_dict(_record(3, question=7), index=3)
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text(json.dumps(_record(0)) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="#1"):
        load_qa_records(bad_json)


def test_round_trip_and_articles() -> None:
    record = QARecord.from_dict(_record(5, title="A | B"))
    assert record.articles == ("A", "B")
    assert QARecord.from_dict(record.to_dict()) == record


# ------------------------------------------------------------------------------------------ sampling


def test_sampling_is_deterministic_by_seed(squad: list[QARecord]) -> None:
    first = load_qa_records("squad", limit=20, seed=1)
    assert first == load_qa_records("squad", limit=20, seed=1)
    assert first != load_qa_records("squad", limit=20, seed=2)
    assert load_qa_records("squad", limit=10, seed=1) == first[:10]
    assert len({r.id for r in first}) == 20
    assert load_qa_records("squad", limit=1000) != squad  # shuffled
    assert sorted(load_qa_records("squad", limit=1000), key=squad.index) == squad


# ------------------------------------------------------------------------------------------ held-out split


def test_held_out_split_by_fraction_never_shares_titles(squad: list[QARecord]) -> None:
    train, evaluation = held_out_split(squad, eval_fraction=0.3, seed=0)
    assert len(train) + len(evaluation) == len(squad)
    assert evaluation and train
    assert not {r.title for r in train} & {r.title for r in evaluation}
    assert len(evaluation) >= 0.3 * len(squad)
    assert held_out_split(squad, eval_fraction=0.3, seed=0) == (train, evaluation)


def test_held_out_split_by_titles(squad: list[QARecord]) -> None:
    train, evaluation = held_out_split(squad, eval_titles=["Pharmacy"])
    assert {r.title for r in evaluation} == {"Pharmacy"}
    assert "Pharmacy" not in {r.title for r in train}
    with pytest.raises(ValueError, match="unknown eval titles"):
        held_out_split(squad, eval_titles=["Pharmacie"])
    with pytest.raises(ValueError, match="exactly one"):
        held_out_split(squad)
    with pytest.raises(ValueError, match="exactly one"):
        held_out_split(squad, eval_fraction=0.5, eval_titles=["Pharmacy"])


def test_held_out_split_keeps_multi_hop_articles_together() -> None:
    records = [QARecord.from_dict(_record(i, title=t)) for i, t in enumerate(["A | B", "B | C", "D", "E", "C"])]
    train, evaluation = held_out_split(records, eval_titles=["A"])
    assert {r.title for r in evaluation} == {"A | B", "B | C", "C"}
    assert {r.title for r in train} == {"D", "E"}
    for seed in range(5):
        train, evaluation = held_out_split(records, eval_fraction=0.2, seed=seed)
        train_articles = {a for r in train for a in r.articles}
        assert not train_articles & {a for r in evaluation for a in r.articles}


# ------------------------------------------------------------------------------------------ grouping


# a character is a token here, and a SQuAD paragraph has about 700 characters (~150 real tokens), so these
# targets give groups of about 1.5, 3 and 6 paragraphs, as 256 / 512 / 1K real tokens would
@pytest.mark.parametrize("target", [1024, 2048, 4096])
def test_group_contexts_average_near_target(squad: list[QARecord], char_tokenizer, target: int) -> None:
    grouped = group_contexts(squad, target, char_tokenizer, seed=0)
    assert [r.id for r in grouped] == [r.id for r in squad]
    contexts = {r.context for r in grouped}
    lengths = [len(char_tokenizer.encode(c, add_special_tokens=False)) for c in contexts]
    assert sum(lengths) / len(lengths) == pytest.approx(target, rel=0.1)
    longest_paragraph = max(len(r.context) for r in squad)
    assert max(lengths) <= target + longest_paragraph
    for original, new in zip(squad, grouped):
        assert original.context in new.context.split("\n\n")
        assert (new.question, new.answers) == (original.question, original.answers)
    paragraphs = [p for c in contexts for p in c.split("\n\n")]
    assert len(paragraphs) == len(set(paragraphs)) == len({r.context for r in squad})


def test_group_contexts_is_seeded(squad: list[QARecord], char_tokenizer) -> None:
    first = group_contexts(squad, 1024, char_tokenizer, seed=3)
    assert first == group_contexts(squad, 1024, char_tokenizer, seed=3)
    assert first != group_contexts(squad, 1024, char_tokenizer, seed=4)
    same_paragraph = [r for r, o in zip(first, squad) if o.context == squad[0].context]
    assert len({r.context for r in same_paragraph}) == 1
    assert group_contexts(squad, 0, char_tokenizer) == squad


def test_group_contexts_with_a_word_counting_callable(squad: list[QARecord]) -> None:
    grouped = group_contexts(squad, 512, lambda text: text.split(), separator="<|endoftext|>")
    contexts = {r.context for r in grouped}
    words = [sum(len(p.split()) for p in c.split("<|endoftext|>")) for c in contexts]
    assert sum(words) / len(words) == pytest.approx(512, rel=0.1)


def test_group_contexts_target_below_paragraph_length_keeps_paragraphs_alone(squad: list[QARecord]) -> None:
    grouped = group_contexts(squad, 10, lambda text: text.split())
    assert [r.context for r in grouped] == [r.context for r in squad]


def test_load_qa_source_reads_a_hub_style_dataset_with_squad_answers(tmp_path):
    import json

    from peft_shine.qa_data import load_qa_source

    folder = tmp_path / "my-squad"  # a dataset repo laid out as on the Hub, read through `datasets`
    folder.mkdir()
    rows = [{"id": "q1", "title": "Paris", "context": "Paris is the capital of France.", "question": "Capital of?",
             "answers": {"text": ["France"], "answer_start": [24]}},
            {"context": "Oslo is in Norway.", "question": "Where is Oslo?", "answers": {"text": ["Norway"],
                                                                                         "answer_start": [11]}}]
    (folder / "validation.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    records = load_qa_source(f"{folder}:validation")
    assert [r.answers for r in records] == [("France",), ("Norway",)]
    assert records[0].id == "q1" and records[1].id.endswith("-1") and records[1].title == str(folder)
    with pytest.raises(ValueError, match="no column"):
        (folder / "validation.jsonl").write_text(json.dumps({"text": "no QA here"}))
        load_qa_source(f"{folder}:validation")
