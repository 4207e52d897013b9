"""Stage-1/stage-2 example building, chat label masks, truncation rules, packing and the collator."""

from __future__ import annotations

import random

import pytest
import torch

from peft_shine.prompting import ANSWER_SYSTEM_PROMPT, answer_system_message, build_prompt
from peft_shine.qa_data import load_qa_records
from peft_shine.training.collate import ShineDataCollator
from peft_shine.training.data import (
    COMPLETION_INSTRUCTION,
    IGNORE_INDEX,
    RECONSTRUCTION_INSTRUCTION,
    build_pretraining_examples,
    build_qa_examples,
    completion_prefix,
    conversation_turns,
    encode_conversation,
    pack_first_fit,
    split_text,
    texts_from_column,
    tokenize_examples,
)


def chat(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


def text_of(tokenizer, ids: list[int]) -> str:
    """Decoded text of the character tokenizer (its WordLevel decoder would join tokens with spaces)."""
    return "".join(tokenizer.convert_ids_to_tokens(ids))


def labelled_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    return text_of(tokenizer, [t for t, label in zip(ids, labels) if label != IGNORE_INDEX])


# ---------------------------------------------------------------------------------------------- label masks


def test_labels_are_exactly_the_answers_and_their_end_of_turn_tokens(tokenizer):
    messages = chat(("Who?", "Bob"), ("Where?", "Lyon"))
    ids, labels, dropped = encode_conversation(tokenizer, messages, max_length=1000)
    assert dropped == 0
    assert text_of(tokenizer, ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert labelled_text(tokenizer, ids, labels) == "Bob<|im_end|>Lyon<|im_end|>"
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))
    # the newline after <|im_end|> and every prompt token stay unlabelled
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for position, token in enumerate(ids[:-1]):
        if token == end and labels[position] != IGNORE_INDEX:
            assert labels[position + 1] == IGNORE_INDEX


def test_prompt_ids_match_the_inference_prompt(tokenizer):
    messages = chat(("Who?", "Bob"))
    (ids, labels), = conversation_turns(tokenizer, messages)
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)


def test_real_smollm2_template_labels_answers_only():
    from transformers import AutoTokenizer

    from peft_shine.storage.base_models import resolve_base_model_path

    smol = AutoTokenizer.from_pretrained(resolve_base_model_path("HuggingFaceTB/SmolLM2-135M-Instruct"))
    ids, labels, _ = encode_conversation(smol, chat(("Who?", "Bob Dylan"), ("Where?", "Lyon, France")), 1000)
    assert smol.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX]) == (
        "Bob Dylan<|im_end|>Lyon, France<|im_end|>")
    assert "system" in smol.decode(ids)  # the template's default system prompt is kept, as at inference


@pytest.mark.parametrize("roles", [["user"], ["assistant", "user"], ["user", "user", "assistant"], []])
def test_bad_role_sequences_raise(tokenizer, roles):
    with pytest.raises(ValueError, match="alternating user/assistant"):
        conversation_turns(tokenizer, [{"role": role, "content": "x"} for role in roles])


# ---------------------------------------------------------------------------------------------- truncation


def test_trailing_exchanges_are_dropped_whole_and_answers_never_cut(tokenizer):
    messages = chat(("Q1", "A" * 10), ("Q2", "B" * 10), ("Q3", "C" * 10))
    full_ids, _, _ = encode_conversation(tokenizer, messages, 1000)
    first_two = len(encode_conversation(tokenizer, messages[:4], 1000)[0])
    ids, labels, dropped = encode_conversation(tokenizer, messages, first_two + 5)
    assert (len(ids), dropped) == (first_two, 1)
    assert labelled_text(tokenizer, ids, labels) == "A" * 10 + "<|im_end|>" + "B" * 10 + "<|im_end|>"
    assert ids == full_ids[:first_two]
    assert encode_conversation(tokenizer, messages, 5) == ([], [], 3)


def test_tokenize_examples_truncates_contexts_and_drops_unfittable_examples(tokenizer):
    examples = [{"context": "x" * 50, "messages": chat(("Q", "short"))},
                {"context": "y", "messages": chat(("Q", "z" * 80))}]
    dataset = tokenize_examples(examples, tokenizer, max_context_length=20, max_conversation_length=40)
    assert len(dataset) == 1
    assert dataset[0]["context_input_ids"] == tokenizer("x" * 20, add_special_tokens=False)["input_ids"]
    assert set(dataset.column_names) == {"context_input_ids", "input_ids", "labels"}


# ---------------------------------------------------------------------------------------------- stage 1


def test_pack_first_fit():
    groups = pack_first_fit([5, 4, 3, 2, 6, 12], capacity=10)
    assert groups == [[5], [0, 1], [2, 3], [4]]
    assert sorted(i for g in groups for i in g) == list(range(6))
    sizes = [random.Random(i).randint(1, 9) for i in range(200)]
    for group in pack_first_fit(sizes, capacity=10, max_open_bins=3):
        assert sum(sizes[i] for i in group) <= 10


def test_completion_prefix_keeps_leading_words_with_their_spacing():
    text = "one two\nthree  four five six seven eight nine ten"
    assert completion_prefix(text, 0.7) == "one two\nthree  four five six seven"
    assert completion_prefix(text, 1.0) == "one two\nthree  four five six seven eight nine"  # one word always hidden
    assert completion_prefix(text, 0.0) == "one"
    assert completion_prefix("single", 0.5) == "single"


def test_split_text_cuts_at_whitespace_within_the_budget(tokenizer):
    text = " ".join(f"word{i}" for i in range(30))
    pieces = split_text(tokenizer, text, max_tokens=40)
    assert len(pieces) > 1 and " ".join(pieces) == text
    assert all(len(tokenizer(p, add_special_tokens=False)["input_ids"]) <= 40 for p in pieces)


def test_pretraining_examples_pack_reconstruct_and_complete(tokenizer):
    rng = random.Random(1)
    texts = [" ".join(rng.choice(["ab", "cde", "f", "ghij"]) for _ in range(rng.randint(3, 12))) for _ in range(40)]
    examples = build_pretraining_examples(texts, tokenizer, max_context_length=120, max_conversation_length=200,
                                          completion_ratio=0.5, seed=0)
    assert len(examples) < len(texts)  # texts were packed together
    targets, kinds = [], []
    for example in examples:
        questions = [m["content"] for m in example["messages"][::2]]
        answers = [m["content"] for m in example["messages"][1::2]]
        pieces = example["context"].split("\n\n")
        assert len(pieces) == len(answers)
        for question, answer in zip(questions, answers):  # reconstruction: the text; completion: a proper prefix
            if question == RECONSTRUCTION_INSTRUCTION:
                assert answer in pieces
            else:
                assert any(answer.startswith(p) and p != answer for p in pieces)
        assert len(tokenizer(example["context"], add_special_tokens=False)["input_ids"]) <= 120
        targets += answers
        kinds += questions
    assert sorted(targets) == sorted(texts)  # every text is a target exactly once, whole
    assert 0.3 < kinds.count(COMPLETION_INSTRUCTION) / len(kinds) < 0.7
    assert set(kinds) == {COMPLETION_INSTRUCTION, RECONSTRUCTION_INSTRUCTION}
    dataset = tokenize_examples(examples, tokenizer, 120, 200)
    assert len(dataset) == len(examples) and max(len(ids) for ids in dataset["input_ids"]) <= 200


def test_pretraining_is_seeded_and_splits_long_texts(tokenizer):
    texts = ["alpha beta gamma " * 20, "short text here"]
    first = build_pretraining_examples(texts, tokenizer, 64, 96, seed=3)
    assert first == build_pretraining_examples(texts, tokenizer, 64, 96, seed=3)
    answers = [m["content"] for e in first for m in e["messages"][1::2]]
    assert len(answers) > 2 and all(len(a) < len(texts[0]) for a in answers)


def test_texts_from_column_validates_rows():
    assert texts_from_column([{"text": "a"}, {"text": "  "}, {"text": "b"}]) == ["a", "b"]
    with pytest.raises(ValueError, match="Row 1: expected a string in column 'text'"):
        texts_from_column([{"text": "a"}, {"body": "b"}])
    import datasets

    with pytest.raises(ValueError, match="no column 'text'"):
        texts_from_column(datasets.Dataset.from_dict({"body": ["x"]}))


# ---------------------------------------------------------------------------------------------- stage 2


@pytest.fixture(scope="module")
def squad():
    return load_qa_records("squad", split="train")[:30]


def test_multi_qa_puts_all_questions_of_a_context_in_one_conversation(tokenizer, squad):
    examples = build_qa_examples(squad, tokenizer, max_context_length=10_000, mode="multi")
    assert len(examples) == len({r.context for r in squad})
    for example in examples:
        records = [r for r in squad if r.context == example["context"]]
        assert example["messages"][0] == answer_system_message()
        pairs = list(zip(example["messages"][1::2], example["messages"][2::2]))
        assert sorted((q["content"], a["content"]) for q, a in pairs) == sorted(
            (r.question, r.answers[0]) for r in records)


def test_single_qa_adds_distractors_within_the_budget(tokenizer, squad):
    examples = build_qa_examples(squad, tokenizer, max_context_length=3000, mode="single", num_distractors=2)
    assert len(examples) == len(squad)
    contexts = {r.context for r in squad}
    for example in examples:
        question = example["messages"][1]["content"]
        own = next(r.context for r in squad if r.question == question)
        pieces = example["context"].split("\n\n")
        assert own in pieces and set(pieces) <= contexts and len(pieces) <= 3
        assert len(tokenizer(example["context"], add_special_tokens=False)["input_ids"]) <= 3000
    tight = build_qa_examples(squad, tokenizer, max_context_length=1, mode="single")
    assert all(e["context"] in contexts for e in tight)  # nothing else fits: the own paragraph alone


def test_qa_training_prompts_are_the_inference_prompts(tokenizer, squad):
    example = build_qa_examples(squad[:1], tokenizer, 10_000, mode="single")[0]
    (ids, labels), = conversation_turns(tokenizer, example["messages"])
    prompt_ids = ids[:labels.index(next(label for label in labels if label != -100))]
    expected = tokenizer(build_prompt(tokenizer, squad[0].question), add_special_tokens=False)["input_ids"]
    assert prompt_ids == expected and ANSWER_SYSTEM_PROMPT in build_prompt(tokenizer, squad[0].question)


def test_mixed_mode_and_bad_records(tokenizer, squad):
    mixed = build_qa_examples(squad, tokenizer, 10_000, mode="mixed")
    assert len(mixed) == len(squad) + len({r.context for r in squad})
    with pytest.raises(ValueError, match="missing required field 'answers'"):
        build_qa_examples([{"id": "1", "source": "s", "title": "t", "context": "c", "question": "q"}], tokenizer, 9)
    with pytest.raises(ValueError, match="mode must be one of"):
        build_qa_examples(squad, tokenizer, 9, mode="both")


# ---------------------------------------------------------------------------------------------- collator


def test_collator_left_pads_contexts_and_right_pads_conversations():
    features = [{"context_input_ids": [7, 8, 9], "input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                {"context_input_ids": [5], "input_ids": [4, 5, 6, 7, 8], "labels": [-100, -100, 6, 7, 8]}]
    batch = ShineDataCollator(pad_token_id=0)(features)
    assert batch["context_input_ids"].tolist() == [[7, 8, 9], [0, 0, 5]]
    assert batch["context_attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, -100], [-100, -100, 6, 7, 8]]
    padded = ShineDataCollator(pad_token_id=0, pad_to_multiple_of=4)(features)
    assert padded["input_ids"].shape == (2, 8) and padded["labels"].dtype == torch.long
