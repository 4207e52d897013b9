"""Long-context evaluation sets: SQuAD padded with other articles' paragraphs, and a planted-fact (needle) test.

Both build ordinary `QARecord` s, so every `shine eval` condition runs on them unchanged; the adapters of long
contexts are generated chunk-wise (``--chunk-tokens``, `peft_shine.adapters.pipeline`).

* **Padded SQuAD** (`padded_squad_records`): each sampled question's own paragraph among distractor paragraphs
  drawn from *other* articles (the bundled SQuAD validation and training samples) until the context holds about
  ``target_tokens`` tokens. The gold paragraph's position cycles through the start, the middle and the end over the
  distinct gold paragraphs (seeded); a record's id ends with ``@<tokens>:<position>``. Questions of one paragraph
  share its padded context (and adapter).
* **Needle** (`needle_records`): a fictional fact (`NEEDLES`: nothing a model knows in advance) planted as its own
  paragraph at several depths of a haystack of SQuAD paragraphs of ``multiple × chunk_tokens`` tokens; one question
  per (length, depth, needle), id ``needle-<n>@<tokens>:d<depth>``.

HotpotQA and MuSiQue (the bundled multi-paragraph samples) need no building: ``--data hotpotqa``, ``--data musique``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

from peft_shine.adapters.pipeline import ChunkingConfig
from peft_shine.errors import ConfigError
from peft_shine.qa_data import QARecord, Tokenizer, _count_tokens, load_qa_records


POSITIONS = ("start", "middle", "end")
NEEDLES: tuple[tuple[str, str, str], ...] = (
    ("The access code for the Vellmar observatory's north door is 4817.",
     "What is the access code for the Vellmar observatory's north door?", "4817"),
    ("Captain Orsolya Brandt named her sailboat the Quiet Heron.",
     "What did Captain Orsolya Brandt name her sailboat?", "the Quiet Heron"),
    ("The village of Tarnow Mill holds its lantern festival every ninth of March.",
     "When does the village of Tarnow Mill hold its lantern festival?", "the ninth of March"),
)
SEPARATOR = "\n\n"


def distractor_pool(seed: int = 0) -> list[tuple[str, str]]:
    """``(title, paragraph)`` of every distinct paragraph of the bundled SQuAD samples (validation and training),
    in a seeded order."""
    records = load_qa_records("squad") + load_qa_records("squad", split="train")
    pool = list(dict.fromkeys((record.title, record.context) for record in records))
    random.Random(seed).shuffle(pool)
    return pool


def _fill(pool: Sequence[tuple[str, str]], exclude_title: str, budget: int, tokenizer: Tokenizer,
          rng: random.Random) -> list[str]:
    """Paragraphs of ``pool`` from articles other than ``exclude_title`` (random order) whose token counts add up to
    at most ``budget`` (each paragraph whole; none when even the shortest does not fit)."""
    chosen, used = [], 0
    candidates = [paragraph for title, paragraph in pool if title != exclude_title]
    rng.shuffle(candidates)
    separator = _count_tokens(tokenizer, SEPARATOR)
    for paragraph in candidates:
        size = _count_tokens(tokenizer, paragraph) + separator
        if used + size > budget:
            continue
        chosen.append(paragraph)
        used += size
        if used >= budget * 0.97:
            break
    return chosen


def padded_squad_records(records: Sequence[QARecord], target_tokens: int, tokenizer: Tokenizer,
                         seed: int = 0, pool: Sequence[tuple[str, str]] | None = None) -> list[QARecord]:
    """Each record's paragraph padded with other articles' paragraphs to about ``target_tokens`` tokens, the gold
    paragraph at the start, middle or end (cycling over distinct paragraphs). See the module docstring."""
    if target_tokens <= 0:
        raise ConfigError(f"target_tokens must be positive, got {target_tokens}")
    pool = distractor_pool(seed) if pool is None else pool
    padded: dict[str, tuple[str, str]] = {}
    for index, record in enumerate(dict.fromkeys(r.context for r in records)):
        rng = random.Random(f"{seed}-{target_tokens}-{index}")
        title = next(r.title for r in records if r.context == record)
        budget = target_tokens - _count_tokens(tokenizer, record)
        distractors = _fill(pool, title, budget, tokenizer, rng) if budget > 0 else []
        position = POSITIONS[index % len(POSITIONS)]
        at = {"start": 0, "middle": len(distractors) // 2, "end": len(distractors)}[position]
        padded[record] = (SEPARATOR.join([*distractors[:at], record, *distractors[at:]]), position)
    return [dataclasses.replace(r, id=f"{r.id}@{target_tokens}:{padded[r.context][1]}", context=padded[r.context][0])
            for r in records]


def needle_records(tokenizer: Tokenizer, chunk_tokens: int, multiples: Sequence[int] = (1, 2, 4, 8),
                   depths: Sequence[float] = (0.1, 0.5, 0.9), needles: Sequence[tuple[str, str, str]] = NEEDLES,
                   seed: int = 0) -> list[QARecord]:
    """One question per (length, depth, needle): the needle sentence as a paragraph at ``depth`` (a fraction of the
    haystack's paragraphs) of a haystack of about ``multiple × chunk_tokens`` tokens (the needle included)."""
    pool = distractor_pool(seed)
    records = []
    for multiple in multiples:
        for depth in depths:
            for number, (fact, question, answer) in enumerate(needles):
                rng = random.Random(f"{seed}-{multiple}-{depth}-{number}")
                budget = multiple * chunk_tokens - _count_tokens(tokenizer, fact + SEPARATOR)
                hay = _fill(pool, "", budget, tokenizer, rng)
                at = round(depth * len(hay))
                context = SEPARATOR.join([*hay[:at], fact, *hay[at:]])
                records.append(QARecord(f"needle-{number}@{multiple * chunk_tokens}:d{depth:g}", "needle",
                                        "needle", context, question, (answer,)))
    return records


def length_of(record_id: str) -> int | None:
    """The target length a long-context record id carries (``…@<tokens>:…``), ``None`` for other ids."""
    if "@" not in record_id:
        return None
    tail = record_id.rsplit("@", 1)[1]
    return int(tail.split(":", 1)[0]) if tail.split(":", 1)[0].isdigit() else None


def records_for_cli(args: Any, shine) -> tuple[list[QARecord], Any]:
    """``shine eval``'s records and chunking from its options: the records of ``--data`` (``needle``: the
    planted-fact test) padded to ``--pad-tokens``, and the `ChunkingConfig` of ``--chunk-*`` (``None`` when off)."""
    chunking = None
    if args.chunk_tokens > 0:
        chunking = ChunkingConfig(args.chunk_tokens, args.chunk_overlap, args.chunk_combine, args.chunk_rank)
    if args.data == "needle":
        multiples = [int(m) for m in args.needle_multiples.split(",")]
        return needle_records(shine.tokenizer, args.chunk_tokens or shine.config.max_context_length, multiples,
                              seed=args.seed), chunking
    records = load_qa_records(args.data, split=args.split, limit=args.limit, seed=args.seed)
    lengths = [int(n) for n in str(args.pad_tokens).split(",") if n.strip()]
    if lengths:
        records = [r for n in lengths for r in padded_squad_records(records, n, shine.tokenizer, seed=args.seed)]
    return records, chunking
