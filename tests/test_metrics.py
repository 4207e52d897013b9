"""Answer extraction and SQuAD / HotpotQA metrics: hand-checked cases and property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_shine.evaluation import (
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


# ------------------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Denver Broncos!", "denver broncos"),
        ("  Hello,   World. ", "hello world"),
        ("an apple a day keeps THE doctor away", "apple day keeps doctor away"),
        ("theatre anthem", "theatre anthem"),  # articles only as whole words
        ("A.B.C.", "abc"),  # the dots go first, leaving one word
        ("A. Lincoln", "lincoln"),  # ... so "A." becomes the article "a"
        ("U.S.-led", "usled"),
        ("rock 'n' roll", "rock n roll"),
        ("t-he end", "end"),  # "t-he" becomes the article "the" after punctuation removal
        ("Café  Ünïcode", "café ünïcode"),
        ("“curly quotes”", "“curly quotes”"),  # only ASCII punctuation is removed
        ("tab\tand\nnewline", "tab and newline"),
        ("", ""),
        ("a an the", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# ------------------------------------------------------------------------------------------ EM and F1


def test_exact_match_uses_normalisation() -> None:
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    assert exact_match("The", "") == 1.0  # both normalise to ""


def test_token_f1_partial_overlap_by_hand() -> None:
    # "cat sat on mat" vs "cat on hat": 2 common tokens, P = 2/4, R = 2/3, F1 = 2PR/(P+R) = 4/7
    assert token_f1("the cat sat on the mat", "a cat on a hat") == pytest.approx(4 / 7)
    # multiset overlap: "x x y" vs "x z" share one "x": P = 1/3, R = 1/2, F1 = 2/5
    assert token_f1("x x y", "x z") == pytest.approx(2 / 5)
    assert token_f1("x x", "x x") == 1.0
    assert token_f1("Paris", "London") == 0.0


def test_token_f1_empty_cases() -> None:
    assert token_f1("", "") == 1.0
    assert token_f1("the", "a") == 1.0  # both normalise to empty
    assert token_f1("", "Paris") == 0.0
    assert token_f1("Paris", "!!") == 0.0


def test_hotpot_yes_no_rule() -> None:
    assert hotpot_f1("yes", "no") == 0.0
    assert hotpot_f1("Yes.", "yes") == 1.0
    assert token_f1("yes it is", "yes") == pytest.approx(0.5)  # P = 1/3, R = 1: 2/3 / (4/3)
    assert hotpot_f1("yes it is", "yes") == 0.0
    assert hotpot_f1("no", "no way") == 0.0
    assert hotpot_f1("noanswer", "") == 0.0
    assert hotpot_f1("Paris France", "Paris") == pytest.approx(2 / 3)  # ordinary F1 otherwise


def test_best_score_takes_max_over_golds() -> None:
    golds = ["Denver Broncos", "Broncos", "the Denver team"]
    assert best_score(exact_match, "the Broncos", golds) == 1.0
    assert best_score(token_f1, "Denver", golds) == pytest.approx(2 / 3)  # vs "Denver Broncos": P = 1, R = 1/2
    with pytest.raises(ValueError, match="empty"):
        best_score(token_f1, "Denver", [])
    with pytest.raises(TypeError, match="single string"):
        best_score(token_f1, "Denver", "Denver")


def test_score_example_picks_rule_by_source() -> None:
    assert uses_hotpot_rule("hotpotqa-dev-distractor")
    assert uses_hotpot_rule("2WikiMultihopQA")
    assert uses_hotpot_rule("2wiki")
    assert not uses_hotpot_rule("squad-v1.1-dev")
    assert not uses_hotpot_rule("musique-ans-v1.0")
    squad = score_example("yes sir", ["yes"], "squad-v1.1-dev")
    hotpot = score_example("yes sir", ["yes"], "hotpotqa-dev-fullwiki")
    assert squad == {"em": 0.0, "f1": pytest.approx(2 / 3)}
    assert hotpot == {"em": 0.0, "f1": 0.0}
    assert score_example("Rollo.", ["Rollo", "King Rollo"], "squad") == {"em": 1.0, "f1": 1.0}


def test_aggregate_reports_percentages() -> None:
    result = aggregate([{"em": 1.0, "f1": 1.0}, {"em": 0.0, "f1": 0.5}])
    assert result == {"em": 50.0, "f1": 75.0, "n": 2}
    with pytest.raises(ValueError):
        aggregate([])


# ------------------------------------------------------------------------------------------ extraction


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        ("<think>\nLet me think.\nIt is Paris.\n</think>\n\nParis", "Paris"),
        ("<think></think>Answer: 42", "42"),
        ("<THINK>x</THINK> Rollo", "Rollo"),
        ("<think>I am still reasoning about", ""),  # unclosed leading think: no answer
        ("reasoning from the prompt's think tag</think> Paris", "Paris"),
        ("Answer: Paris", "Paris"),
        ("FINAL ANSWER:  Paris \nbecause it is the capital", "Paris"),
        ("final answer:\n\n  Paris", "Paris"),
        ("answer : Paris", "Paris"),
        ("The answer: Paris", "Paris"),
        ("The answer to this question is: \"Rollo\"", "\"Rollo\""),
        ("The answer is: The answer is: The answer is: 1066", "1066"),  # a looping preamble
        ("The answer is 42.", "42."),
        ("Paris. The answer: Paris", "Paris. The answer: Paris"),  # only a leading prefix is stripped
        ("Answers vary by region", "Answers vary by region"),
        ("\n\n  Paris\nThe capital of France.", "Paris"),
        ("Paris<|im_end|>", "Paris"),
        ("<|im_start|>assistant\nParis", "assistant"),  # role text is not a special token
        ("", ""),
        ("   \n \n", ""),
    ],
)
def test_extract_answer(generation: str, expected: str) -> None:
    assert extract_answer(generation) == expected


# ------------------------------------------------------------------------------------------ properties

_CONTROL = st.sampled_from(["\x00", "\x07", "\x1c", "\x1f", "\x7f", "\x85", "\u2028", "\u200b", "\r", "\t", "\n"])
_CHARS = st.one_of(st.characters(exclude_categories=("Cs",)), _CONTROL, st.sampled_from(list("aAnNtThHeE .,!-'")))
_TEXT = st.text(alphabet=_CHARS, max_size=60)
_LONG_WORD = st.text(alphabet=st.characters(exclude_categories=("Cs", "Zs", "Zl", "Zp")), min_size=1, max_size=3).map(
    lambda piece: piece * 4000
)
ANY_TEXT = st.one_of(_TEXT, _LONG_WORD, st.builds(lambda a, b: f"{a} {b}", _TEXT, _LONG_WORD))
PROPERTY_SETTINGS = settings(max_examples=80, deadline=None)


@PROPERTY_SETTINGS
@given(prediction=ANY_TEXT, gold=ANY_TEXT)
def test_metric_ranges_order_and_symmetry(prediction: str, gold: str) -> None:
    em = exact_match(prediction, gold)
    assert em in (0.0, 1.0)
    for f1_metric in (token_f1, hotpot_f1):
        f1 = f1_metric(prediction, gold)
        assert 0.0 <= f1 <= 1.0
        assert em <= f1
        assert f1 == f1_metric(gold, prediction)


@PROPERTY_SETTINGS
@given(text=ANY_TEXT)
def test_f1_of_a_string_with_itself_is_one(text: str) -> None:
    if normalize_answer(text):
        assert token_f1(text, text) == 1.0
        assert hotpot_f1(text, text) == 1.0
        assert exact_match(text, text) == 1.0


@PROPERTY_SETTINGS
@given(generation=ANY_TEXT)
def test_extract_answer_gives_one_stripped_line(generation: str) -> None:
    answer = extract_answer(generation)
    assert answer == answer.strip()
    assert len(answer.splitlines()) <= 1
    score = score_example(answer, [generation or "x"], "hotpotqa")
    assert 0.0 <= score["em"] <= score["f1"] <= 1.0


def test_score_generation_scores_the_extracted_answer() -> None:
    from peft_shine.evaluation import score_generation

    assert score_generation("The answer is: Rollo\nHe led the Norse.", ["Rollo"], "squad-v1.1-dev") == {
        "prediction": "Rollo", "em": 1.0, "f1": 1.0}
    assert score_generation("Sigmund", ["Rollo"], "squad-v1.1-dev")["f1"] == 0.0
