"""Training examples for the two SHINE stages, tokenised once, and the rules that shape them.

An example is a **context** (what the hypernetwork reads) and a **conversation** (what the base LM, carrying the
generated LoRA, must answer *without* the context). Builders return plain dicts ``{"context": str, "messages":
[{"role", "content"}, ...]}``; `tokenize_examples` turns them into a `datasets.Dataset` of token ids in one
``datasets.map`` pass, so nothing is re-tokenised per epoch (random choices are drawn once, from ``seed``).

Stage 1 — pretraining (docs/training.md), from any text column (`build_pretraining_examples`):

* long texts are split at whitespace into pieces that fit; pieces are packed first-fit (in a seeded random order)
  into groups that fit both the context and the conversation budget;
* per text, with probability ``completion_ratio`` a *completion* item (the context holds only the first
  ``min_completion_keep``–``max_completion_keep`` of its words, original spacing kept), else a *reconstruction*
  item (the context holds the whole text); either way the target is the **whole** text;
* the context joins the group's pieces in a random order; the conversation asks for every text in an
  independent random order, one user/assistant exchange per text.

Instruction spelling: the user turns are **plain text** (`RECONSTRUCTION_INSTRUCTION`, `COMPLETION_INSTRUCTION`),
not new special tokens such as SHINE's ``<RECON>``/``<COMP>``: the base LM — embeddings included — is frozen, so a
new token would keep an embedding row that nothing trains; ordinary words already mean something to the base.

Stage 2 — instruction tuning from QA records (`build_qa_examples`): *multi-QA* (all questions about one context in
one conversation, in a random order) and/or *single-QA with distractors* (one question; its paragraph at a random
position among other records' paragraphs, added while they fit; chunk-wise: `training.long_context_data`), or
*separate QA* (a context's questions each in its own one-question conversation, several sharing one context
encoding: the answer pass sees exactly the inference prompt, and no answer is a hint for the next question as in a
multi-QA conversation; the example's ``input_ids``/``labels`` are then lists of rows).

Chat formatting uses the base model's **own** chat template, unchanged (so training and inference prompts are
identical); QA conversations open with the short-answer system turn of `prompting.build_prompt`, stage-1
conversations with the template's default (if any). Each exchange is tokenised piecewise — prompt, answer, end of
turn — so the prompt ids equal those of the inference prompt (`prompting.build_prompt`). Labels are -100
everywhere except the assistant answer and the first token after it (its end-of-turn token, e.g. ``<|im_end|>``).

Truncation rules: a context is cut to its first ``max_context_length`` tokens; a conversation keeps its leading
exchanges while they fit ``max_conversation_length`` and drops whole trailing exchanges — an answer is never cut.
An example whose first exchange does not fit is dropped (counted in the log).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from peft_shine.errors import ConfigError, DataError, UnsupportedModelError
from peft_shine.hypernetwork.losses import IGNORE_INDEX
from peft_shine.prompting import answer_system_message
from peft_shine.qa_data import QARecord


logger = logging.getLogger(__name__)

RECONSTRUCTION_INSTRUCTION = "Repeat the text."
COMPLETION_INSTRUCTION = "Continue the text from the start."
TEXT_SEPARATOR = "\n\n"
QA_MODES = ("multi", "single", "mixed", "separate")
Example = dict[str, Any]
Message = dict[str, str]


# ---------------------------------------------------------------------------------------------- chat encoding


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def conversation_turns(tokenizer: PreTrainedTokenizerBase,
                       messages: Sequence[Message]) -> list[tuple[list[int], list[int]]]:
    """``(input_ids, labels)`` of every exchange (prompt part + assistant answer + end of turn), in order.

    Raises:
        ValueError: if the roles are not user/assistant (optionally after a leading system message) ending with an
            assistant answer, or if the tokenizer's chat template does not render a conversation as a prefix of
            its continuation (then labels could not be placed exactly).
    """
    roles = [message["role"] for message in messages]
    body = roles[1:] if roles[:1] == ["system"] else roles
    if not body or body != ["user", "assistant"] * (len(body) // 2):
        raise DataError(f"Expected alternating user/assistant messages ending with an assistant answer, got {roles}.")
    turns, done = [], ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], generation_prompt=True)
        full = _render(tokenizer, messages[: index + 1])
        answer = message["content"]
        if not (prompt.startswith(done) and full.startswith(prompt + answer)) or len(full) == len(prompt + answer):
            raise UnsupportedModelError("This tokenizer's chat template does not render each conversation as a prefix "
                                        "of its continuation followed by an end-of-turn marker; labels cannot be placed "
                                        "exactly.")
        prompt_ids = _ids(tokenizer, prompt[len(done):])
        answer_ids = _ids(tokenizer, answer)
        tail_ids = _ids(tokenizer, full[len(prompt) + len(answer):])
        labels = [IGNORE_INDEX] * len(prompt_ids) + answer_ids + tail_ids[:1] + [IGNORE_INDEX] * (len(tail_ids) - 1)
        turns.append((prompt_ids + answer_ids + tail_ids, labels))
        done = full
    return turns


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message],
                        max_length: int) -> tuple[list[int], list[int], int]:
    """Token ids and labels of a chat, keeping whole leading exchanges within ``max_length`` tokens.

    Returns ``(input_ids, labels, dropped_turns)``; both lists are empty when even the first exchange is too long.
    """
    turns = conversation_turns(tokenizer, messages)
    input_ids: list[int] = []
    labels: list[int] = []
    kept = 0
    for turn_ids, turn_labels in turns:
        if len(input_ids) + len(turn_ids) > max_length:
            break
        input_ids += turn_ids
        labels += turn_labels
        kept += 1
    return input_ids, labels, len(turns) - kept


def _chat_overheads(tokenizer: PreTrainedTokenizerBase, instruction: str) -> tuple[int, int]:
    """``(fixed, per_exchange)`` token overheads of the chat template around answers (probed with one token)."""
    probe = "x"
    one = [{"role": "user", "content": instruction}, {"role": "assistant", "content": probe}]
    lengths = [sum(len(ids) for ids, _ in conversation_turns(tokenizer, one * n)) for n in (1, 2)]
    per_exchange = lengths[1] - lengths[0] - len(_ids(tokenizer, probe))
    return lengths[0] - per_exchange - len(_ids(tokenizer, probe)), per_exchange


# ---------------------------------------------------------------------------------------------- stage 1


def texts_from_column(rows: Iterable[Mapping[str, Any]] | Sequence[str], column: str = "text") -> list[str]:
    """The non-blank strings of a text column (a `datasets.Dataset`, a list of dicts, or a list of strings).

    Raises:
        ValueError: if a row lacks the column or holds a non-string value (naming the row).
    """
    names = getattr(rows, "column_names", None)
    if names is not None and column not in names:
        raise DataError(f"The dataset has no column {column!r}; its columns are {names}.")
    texts = []
    for index, row in enumerate(rows):
        value = row if isinstance(row, str) else (row.get(column) if isinstance(row, Mapping) else None)
        if not isinstance(value, str):
            raise DataError(f"Row {index}: expected a string in column {column!r}, got {type(value).__name__}.")
        if value.strip():
            texts.append(value)
    return texts


def completion_prefix(text: str, keep_fraction: float) -> str:
    """The text up to the end of its first ``round(words · keep_fraction)`` words (at least one, and at least one
    word hidden when there are two or more), with the original spacing."""
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    if len(ends) < 2:
        return text
    keep = min(len(ends) - 1, max(1, round(len(ends) * keep_fraction)))
    return text[: ends[keep - 1]]


def split_text(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> list[str]:
    """Split ``text`` at whitespace into pieces of at most ``max_tokens`` tokens (a single over-long word is cut)."""
    pieces = []
    while text.strip():
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoded["input_ids"]) <= max_tokens:
            pieces.append(text)
            break
        limit = encoded["offset_mapping"][max_tokens][0]
        cut = max(text.rfind(" ", 0, limit), text.rfind("\n", 0, limit))
        cut = cut if cut > 0 else limit
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [piece for piece in pieces if piece.strip()]


def pack_first_fit(sizes: Sequence[int], capacity: int, max_open_bins: int = 100) -> list[list[int]]:
    """Group item indices first-fit into bins of ``capacity`` (SHINE's packing): each item goes to the first open
    bin with room; with ``max_open_bins`` open and none fitting, the fullest is closed. An item of ``capacity`` or
    more forms its own group."""
    groups: list[list[int]] = []
    open_bins: list[list] = []  # [used, members]
    for index, size in enumerate(sizes):
        if size >= capacity:
            groups.append([index])
            continue
        target = next((b for b in open_bins if b[0] + size <= capacity), None)
        if target is None:
            if len(open_bins) == max_open_bins:
                fullest = max(open_bins, key=lambda b: b[0])
                open_bins.remove(fullest)
                groups.append(fullest[1])
            target = [0, []]
            open_bins.append(target)
        target[0] += size
        target[1].append(index)
    return groups + [members for _, members in open_bins]


def _pretraining_example(texts: Sequence[str], rng: random.Random, completion_ratio: float,
                         keep_range: tuple[float, float], separator: str) -> Example:
    evidence, exchanges = [], []
    for text in texts:
        if rng.random() < completion_ratio:
            evidence.append(completion_prefix(text, rng.uniform(*keep_range)))
            exchanges.append((COMPLETION_INSTRUCTION, text))
        else:
            evidence.append(text)
            exchanges.append((RECONSTRUCTION_INSTRUCTION, text))
    rng.shuffle(evidence)
    rng.shuffle(exchanges)
    messages = [m for q, a in exchanges for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    return {"context": separator.join(evidence), "messages": messages}


def build_pretraining_examples(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    max_context_length: int,
    max_conversation_length: int,
    completion_ratio: float = 0.5,
    min_completion_keep: float = 0.7,
    max_completion_keep: float = 0.9,
    seed: int = 0,
    separator: str = TEXT_SEPARATOR,
) -> list[Example]:
    """Stage-1 examples (reconstruction / completion of packed texts); see the module docstring.

    A group's cost per text is its token count plus the larger of the chat overhead of one exchange and the
    separator, against ``min(max_context_length, max_conversation_length - fixed chat overhead)``.
    """
    if not 0.0 <= completion_ratio <= 1.0 or not 0.0 < min_completion_keep <= max_completion_keep <= 1.0:
        raise ConfigError("Need 0 <= completion_ratio <= 1 and 0 < min_completion_keep <= max_completion_keep <= 1.")
    rng = random.Random(seed)
    fixed, per_exchange = _chat_overheads(tokenizer, COMPLETION_INSTRUCTION)
    overhead = max(per_exchange, len(_ids(tokenizer, separator)))
    capacity = min(max_context_length + overhead, max_conversation_length - fixed)
    if capacity <= overhead:
        raise ConfigError(f"max_conversation_length={max_conversation_length} leaves no room for a text after the "
                          f"chat template's {fixed + per_exchange} tokens of overhead.")
    pieces = [piece for text in texts for piece in split_text(tokenizer, text, capacity - overhead)]
    rng.shuffle(pieces)
    sizes = [len(ids) + overhead for ids in tokenizer(pieces, add_special_tokens=False)["input_ids"]] if pieces else []
    groups = pack_first_fit(sizes, capacity)
    keep_range = (min_completion_keep, max_completion_keep)
    return [_pretraining_example([pieces[i] for i in group], rng, completion_ratio, keep_range, separator)
            for group in groups]


# ---------------------------------------------------------------------------------------------- stage 2


def as_qa_records(records: Iterable[QARecord | Mapping[str, Any]]) -> list[QARecord]:
    """Validate records in the shared QA format (`QARecord` or dicts); a `ValueError` names a bad record."""
    result = [r if isinstance(r, QARecord) else QARecord.from_dict(r, index=i) for i, r in enumerate(records)]
    for index, record in enumerate(result):
        if not record.context.strip():
            raise DataError(f"QA record #{index} (id {record.id!r}) has an empty context.")
    return result


def _qa_messages(records: Sequence[QARecord]) -> list[Message]:
    exchanges = [m for r in records for m in ({"role": "user", "content": r.question},
                                              {"role": "assistant", "content": r.answers[0]})]
    return [answer_system_message(), *exchanges]


def _with_distractors(index: int, contexts: Sequence[str], lengths: Sequence[int], budget: int, count: int,
                      rng: random.Random, separator: str, separator_tokens: int) -> str:
    """``contexts[index]`` among up to ``count`` other random contexts (each added only if the whole still fits)."""
    picks = [j for j in rng.sample(range(len(contexts)), min(count + 1, len(contexts))) if j != index][:count]
    chosen, used = [contexts[index]], lengths[index]
    for j in picks:
        candidate = contexts[j]
        if used + separator_tokens + lengths[j] <= budget:
            chosen.append(candidate)
            used += separator_tokens + lengths[j]
    rng.shuffle(chosen)
    return separator.join(chosen)


def split_evenly(items: Sequence, most: int) -> list[list]:
    """``items`` in order, cut into the fewest groups of at most ``most`` items, their sizes differing by at most
    one (5 items, at most 4 a group: 3 + 2, not 4 + 1)."""
    if most < 1:
        raise ConfigError(f"questions_per_example must be at least 1, got {most}.")
    count = -(-len(items) // most)
    size, extra = divmod(len(items), count) if count else (0, 0)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [list(items[bounds[i]:bounds[i + 1]]) for i in range(count)]


def build_qa_examples(
    records: Iterable[QARecord | Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_context_length: int,
    mode: str = "multi",
    num_distractors: int = 2,
    seed: int = 0,
    separator: str = TEXT_SEPARATOR,
    questions_per_example: int = 4,
) -> list[Example]:
    """Stage-2 examples from QA records: ``mode`` ``"multi"`` (one conversation per context with all its
    questions), ``"single"`` (one question per example, up to ``num_distractors`` other contexts added while the
    whole fits ``max_context_length``), ``"mixed"`` (both) or ``"separate"`` (a context's questions in random order,
    cut evenly into groups of at most ``questions_per_example``; each group one example of one-question
    conversations under ``"conversations"``). The gold answer is each record's first answer."""
    if mode not in QA_MODES:
        raise ConfigError(f"mode must be one of {QA_MODES}, got {mode!r}.")
    rng = random.Random(seed)
    by_context: dict[str, list[QARecord]] = {}
    for record in as_qa_records(records):
        by_context.setdefault(record.context, []).append(record)
    examples = []
    if mode in ("multi", "mixed"):
        for context, group in by_context.items():
            examples.append({"context": context, "messages": _qa_messages(rng.sample(group, len(group)))})
    if mode == "separate":
        for context, group in by_context.items():
            for part in split_evenly(rng.sample(group, len(group)), questions_per_example):
                examples.append({"context": context, "conversations": [_qa_messages([record]) for record in part]})
    if mode in ("single", "mixed"):
        contexts = list(by_context)
        lengths = [len(ids) for ids in tokenizer(contexts, add_special_tokens=False)["input_ids"]]
        sep_tokens = len(_ids(tokenizer, separator))
        for index, group in enumerate(by_context.values()):
            for record in group:
                mixed = _with_distractors(index, contexts, lengths, max_context_length, num_distractors, rng,
                                          separator, sep_tokens)
                examples.append({"context": mixed, "messages": _qa_messages([record])})
    rng.shuffle(examples)
    return examples


# ---------------------------------------------------------------------------------------------- tokenisation


def _encode_example(example: Example, tokenizer: PreTrainedTokenizerBase, max_context_length: int,
                    max_conversation_length: int) -> dict[str, Any]:
    """One example's ids; a ``"conversations"`` example gives a list of rows (a row too long is dropped)."""
    context_ids = _ids(tokenizer, example["context"])[:max_context_length]
    if example.get("conversations") is None:
        input_ids, labels, dropped = encode_conversation(tokenizer, example["messages"], max_conversation_length)
        return {"context_input_ids": context_ids, "input_ids": input_ids, "labels": labels, "dropped_turns": dropped}
    rows = [encode_conversation(tokenizer, messages, max_conversation_length) for messages in example["conversations"]]
    return {"context_input_ids": context_ids, "input_ids": [ids for ids, _, _ in rows if ids],
            "labels": [labels for ids, labels, _ in rows if ids], "dropped_turns": sum(row[2] for row in rows)}


def conversation_tokens(input_ids: Sequence) -> int:
    """Answer-pass tokens of an example: its conversation's length, or the sum of its rows' (separate QA)."""
    return sum(len(row) for row in input_ids) if input_ids and isinstance(input_ids[0], Sequence) else len(input_ids)


def tokenize_examples(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_context_length: int,
                      max_conversation_length: int, num_proc: int | None = None, keep_raw: bool = False):
    """Tokenise examples once into a `datasets.Dataset` with ``context_input_ids``, ``input_ids``, ``labels``
    (truncation rules in the module docstring); examples left without a labelled token are dropped. ``keep_raw``
    also keeps ``context``, ``messages`` and ``dropped_turns`` (what `distillation.add_teacher_targets` reads)."""
    import datasets  # heavy (pyarrow): loaded when a dataset is built

    if not examples:
        raise DataError("No examples to tokenise (is the data empty?).")
    raw = datasets.Dataset.from_list(list(examples))
    raw_columns = [name for name in raw.column_names
                   if not keep_raw or name not in ("context", "messages", "conversations")]
    encoded = raw.map(_encode_example, remove_columns=raw_columns, num_proc=num_proc, desc="Tokenising",
                      fn_kwargs={"tokenizer": tokenizer, "max_context_length": max_context_length,
                                 "max_conversation_length": max_conversation_length})
    dropped_turns = sum(encoded["dropped_turns"])
    kept = encoded.filter(lambda ids, ctx: len(ids) > 0 and len(ctx) > 0, input_columns=["input_ids",
                                                                                            "context_input_ids"])
    if dropped_turns or len(kept) < len(encoded):
        logger.warning("Truncation: %d trailing exchanges dropped; %d of %d examples dropped (first exchange longer "
                       "than max_conversation_length=%d).", dropped_turns, len(encoded) - len(kept), len(encoded),
                       max_conversation_length)
    if len(kept) == 0:
        raise DataError(f"Every example was dropped: no first exchange fits max_conversation_length="
                        f"{max_conversation_length}.")
    return kept if keep_raw else kept.remove_columns("dropped_turns")
