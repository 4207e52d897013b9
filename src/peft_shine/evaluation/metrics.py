"""Answer extraction and SQuAD / HotpotQA answer metrics (docs/evaluation.md).

* :func:`normalize_answer` is the official SQuAD v1.1 normalisation.
* :func:`exact_match` and :func:`token_f1` follow the SQuAD evaluation script, with the convention that an empty
  normalised side gives F1 = 1 iff both sides are empty.
* :func:`hotpot_f1` adds the HotpotQA rule: 0 if either normalised side is ``yes`` / ``no`` / ``noanswer`` and the
  two sides differ. It is used for HotpotQA and 2WikiMultihopQA.
* :func:`extract_answer` turns a raw generation into the answer string that is scored.
* :func:`rouge_l` is the ROUGE-L F-measure (longest common subsequence of normalised tokens); with :func:`token_f1`
  it scores the recall conditions, where an adapter repeats its whole context (:func:`score_recall`).

All scores here are in [0, 1]; :func:`aggregate` reports means ×100 as in the paper's tables.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from peft_shine.errors import ArgumentError, DataError


Metric = Callable[[str, str], float]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_HOTPOT_SPECIAL = frozenset({"yes", "no", "noanswer"})
_HOTPOT_RULE_MARKERS = ("hotpot", "2wiki")

_SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]*\|>")
_THINK_BLOCK = re.compile(r"<think>.*?</think>", flags=re.DOTALL | re.IGNORECASE)
_UNCLOSED_THINK = re.compile(r"^\s*<think>", flags=re.IGNORECASE)
_CLOSE_THINK = re.compile(r"</think>", flags=re.IGNORECASE)
# "Answer:", "Final answer:", and the preambles small instruct models put first ("The answer is ...",
# "The answer to this question is: ...")
_ANSWER_PREFIX = re.compile(r"^\s*(?:the\s+)?(?:final\s+)?answer(?:\s+to\s+(?:this|the|your)\s+question)?\s*"
                            r"(?:is\b\s*:?|:)", flags=re.IGNORECASE)
_MAX_PREFIXES = 3  # a preamble repeated by a looping model is stripped up to this many times


def normalize_answer(s: str) -> str:
    """Normalise an answer as the official SQuAD script does.

    Lower-case, remove ASCII punctuation, remove the words ``a`` / ``an`` / ``the``, then collapse whitespace.

    >>> normalize_answer("The  Denver Broncos!")
    'denver broncos'
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 if the normalised prediction equals the normalised gold answer, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f_measure(matched: int, prediction_length: int, gold_length: int) -> float:
    """Harmonic mean of ``matched / prediction_length`` and ``matched / gold_length`` (0.0 if nothing matched)."""
    if matched == 0:
        return 0.0
    precision = matched / prediction_length
    recall = matched / gold_length
    return 2 * precision * recall / (precision + recall)


def _f1_from_normalized(prediction: str, gold: str) -> float:
    prediction_tokens = prediction.split()
    gold_tokens = gold.split()
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    return _f_measure(sum(common.values()), len(prediction_tokens), len(gold_tokens))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1: harmonic mean of precision and recall of the multiset overlap of normalised tokens.

    If either normalised side is empty, the score is 1.0 when both are empty and 0.0 otherwise.
    """
    return _f1_from_normalized(normalize_answer(prediction), normalize_answer(gold))


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel (Hyyrö 2004): one big-integer update per token of ``first``, so texts of thousands of tokens are
    scored in milliseconds where the quadratic table of the textbook recurrence takes seconds in Python.
    """
    masks: dict[str, int] = {}
    for position, token in enumerate(second):
        masks[token] = masks.get(token, 0) | (1 << position)
    full = (1 << len(second)) - 1
    row = full  # bit j set: the LCS row does not grow at column j
    for token in first:
        matches = row & masks.get(token, 0)
        row = ((row + matches) | (row - matches)) & full
    return len(second) - row.bit_count()


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F-measure (β = 1) over normalised tokens (:func:`normalize_answer`): the harmonic mean of
    ``LCS / len(prediction)`` and ``LCS / len(gold)``. Empty sides follow :func:`token_f1` (1.0 iff both empty).

    >>> round(rouge_l("the cat sat on a mat", "a cat lay on the mat"), 3)
    0.75
    """
    prediction_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not prediction_tokens or not gold_tokens:
        return float(prediction_tokens == gold_tokens)
    return _f_measure(lcs_length(prediction_tokens, gold_tokens), len(prediction_tokens), len(gold_tokens))


def hotpot_f1(prediction: str, gold: str) -> float:
    """HotpotQA F1: :func:`token_f1`, but 0.0 if either normalised side is yes/no/noanswer and they differ."""
    normalized_prediction = normalize_answer(prediction)
    normalized_gold = normalize_answer(gold)
    special = {normalized_prediction, normalized_gold} & _HOTPOT_SPECIAL
    if special and normalized_prediction != normalized_gold:
        return 0.0
    return _f1_from_normalized(normalized_prediction, normalized_gold)


def best_score(metric: Metric, prediction: str, golds: Sequence[str]) -> float:
    """The maximum of ``metric(prediction, gold)`` over the acceptable gold answers.

    Raises:
        TypeError: if ``golds`` is a single string (pass ``[gold]``).
        ValueError: if ``golds`` is empty.
    """
    if isinstance(golds, str):
        raise ArgumentError("golds must be a sequence of answer strings, not a single string; pass [gold]")
    if len(golds) == 0:
        raise DataError("golds is empty: at least one gold answer is needed to score a prediction")
    return max(metric(prediction, gold) for gold in golds)


def uses_hotpot_rule(dataset_name_or_source: str) -> bool:
    """Whether a dataset name or record ``source`` is scored with the HotpotQA F1 (HotpotQA and 2Wiki)."""
    key = re.sub(r"[^0-9a-z]", "", dataset_name_or_source.lower())
    return any(marker in key for marker in _HOTPOT_RULE_MARKERS)


def score_example(prediction: str, golds: Sequence[str], dataset_name_or_source: str) -> dict[str, float]:
    """Score one (already extracted) prediction against its gold answers.

    EM is the SQuAD exact match; F1 is :func:`hotpot_f1` for HotpotQA / 2WikiMultihopQA names or sources and
    :func:`token_f1` otherwise; both take the maximum over ``golds``. Returns ``{"em": ..., "f1": ...}`` in [0, 1].
    """
    f1_metric = hotpot_f1 if uses_hotpot_rule(dataset_name_or_source) else token_f1
    return {
        "em": best_score(exact_match, prediction, golds),
        "f1": best_score(f1_metric, prediction, golds),
    }


def aggregate(scores: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean EM and F1 over per-example scores, reported ×100, plus the count ``n``; also the mean ``rouge_l`` ×100
    when every score has one (recall rows).

    Raises:
        ValueError: if there are no scores.
    """
    items = list(scores)
    if not items:
        raise DataError("aggregate() needs at least one per-example score")
    n = len(items)
    metrics = ["em", "f1", *(["rouge_l"] if all("rouge_l" in item for item in items) else [])]
    return {**{metric: 100.0 * sum(item[metric] for item in items) / n for metric in metrics}, "n": n}


def _drop_thinking(text: str) -> str:
    text = _THINK_BLOCK.sub("", text)
    if _UNCLOSED_THINK.match(text):
        # thinking that never finished: there is no answer
        return ""
    closing = list(_CLOSE_THINK.finditer(text))
    if closing:
        # the opening tag was in the prompt: the answer follows the last closing tag
        text = text[closing[-1].end() :]
    return text


def clean_generation(generation: str) -> str:
    """A raw generation without ``<|...|>`` special tokens and thinking (rules of :func:`extract_answer`)."""
    return _drop_thinking(_SPECIAL_TOKEN.sub("", generation))


def extract_answer(generation: str) -> str:
    """Extract the answer to score from a raw model generation (docs/evaluation.md).

    Steps: remove ``<|...|>`` special tokens; drop a ``<think>…</think>`` block (an unclosed leading ``<think>``
    means the model never answered and gives ``""``; a lone ``</think>`` keeps only what follows it); strip a
    leading ``answer:`` / ``final answer:`` or a preamble such as ``The answer (to this question) is:``
    (case-insensitive, up to three times); keep the first non-empty line; strip whitespace.

    >>> extract_answer("<think>hmm</think>\\nAnswer: Paris\\nIt is the capital.")
    'Paris'
    """
    text = clean_generation(generation)
    for _ in range(_MAX_PREFIXES):
        text, found = _ANSWER_PREFIX.subn("", text, count=1)
        if not found:
            break
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def score_generation(generation: str, golds: Sequence[str], dataset_name_or_source: str) -> dict[str, Any]:
    """``{"prediction", "em", "f1"}`` of a raw generation: `extract_answer`, then `score_example`."""
    prediction = extract_answer(generation)
    return {"prediction": prediction, **score_example(prediction, golds, dataset_name_or_source)}


def score_recall(generation: str, context: str) -> dict[str, Any]:
    """``{"prediction", "em", "f1", "rouge_l"}`` of an attempt to repeat ``context``: the whole generation (without
    special tokens and thinking, stripped; not cut to one line) against the context, by :func:`exact_match`,
    :func:`token_f1` and :func:`rouge_l`."""
    prediction = clean_generation(generation).strip()
    return {"prediction": prediction, "em": exact_match(prediction, context), "f1": token_f1(prediction, context),
            "rouge_l": rouge_l(prediction, context)}
