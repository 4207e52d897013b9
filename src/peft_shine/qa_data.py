"""QA records in the shared JSONL format, the bundled samples, SQuAD-with-distractors grouping, held-out splits.

A QA record is one JSON object per line with exactly the string keys ``id``, ``source``, ``title``, ``context``,
``question`` and a non-empty list of strings ``answers`` (see ``assets/data/README.md``). Multi-hop records
(HotpotQA, MuSiQue) join their supporting article titles with ``" | "``.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from peft_shine.errors import ConfigError, DataError, MissingFileError


TITLE_SEPARATOR = " | "
QA_FORMAT = (
    "one JSON object per line with keys id (str), source (str), title (str), context (str), question (str) and "
    'answers (non-empty list of str), e.g. {"id": "q1", "source": "squad-v1.1-dev", "title": "Normans", '
    '"context": "...", "question": "...", "answers": ["France"]}'
)
_STRING_FIELDS = ("id", "source", "title", "context", "question")

# (bundled name, split) -> file under peft_shine/assets/data
BUNDLED_QA_FILES: dict[tuple[str, str], str] = {
    ("squad", "validation"): "squad_sample.jsonl",
    ("squad", "train"): "squad_train_sample.jsonl",
    ("hotpotqa", "validation"): "hotpotqa_sample.jsonl",
    ("musique", "validation"): "musique_sample.jsonl",
    ("nq_open", "validation"): "nq_open_sample.jsonl",
}
SAMPLE_CONTEXT_FILE = "sample_context.json"

Tokenizer = Any  # a transformers tokenizer (has .encode) or any callable str -> sequence of token ids


@dataclass(frozen=True)
class QARecord:
    """One question about one context, with its acceptable gold answers."""

    id: str
    source: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], index: int | None = None) -> QARecord:
        """Build a record from a mapping in the shared QA format, validating keys and types.

        Extra keys are ignored. A key whose value is ``None`` counts as missing (``datasets`` fills keys that
        some lines lack with ``None``).

        Raises:
            ValueError: naming the record (``index`` and id when known), the bad field and the expected format.
        """
        if not isinstance(data, Mapping):
            raise DataError(f"QA record {_where(index, None)} is a {type(data).__name__}, expected {QA_FORMAT}")
        record_id = data.get("id") if isinstance(data.get("id"), str) else None
        where = _where(index, record_id)
        for field in (*_STRING_FIELDS, "answers"):
            if data.get(field) is None:
                raise DataError(f"QA record {where}: missing required field {field!r}; expected {QA_FORMAT}")
        for field in _STRING_FIELDS:
            if not isinstance(data[field], str):
                raise DataError(
                    f"QA record {where}: field {field!r} must be a string, got {type(data[field]).__name__}; "
                    f"expected {QA_FORMAT}"
                )
        answers = data["answers"]
        if isinstance(answers, str) or not isinstance(answers, Sequence) or len(answers) == 0:
            raise DataError(
                f"QA record {where}: field 'answers' must be a non-empty list of strings; expected {QA_FORMAT}"
            )
        if not all(isinstance(answer, str) for answer in answers):
            raise DataError(f"QA record {where}: field 'answers' must contain only strings; expected {QA_FORMAT}")
        return cls(**{field: data[field] for field in _STRING_FIELDS}, answers=tuple(answers))

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict in the shared format."""
        return {**dataclasses.asdict(self), "answers": list(self.answers)}

    @property
    def articles(self) -> tuple[str, ...]:
        """The article titles this record is about (one for SQuAD / NQ, the supporting titles for multi-hop)."""
        return tuple(title for title in self.title.split(TITLE_SEPARATOR) if title)


def _where(index: int | None, record_id: str | None) -> str:
    parts = [f"#{index}"] if index is not None else []
    if record_id is not None:
        parts.append(f"(id {record_id!r})")
    return " ".join(parts) or "(unknown)"


# ---------------------------------------------------------------------------------------------- bundled files


def _data_dir() -> Any:
    return resources.files("peft_shine") / "assets" / "data"


def available_bundled() -> list[str]:
    """Names of the files bundled under ``peft_shine/assets/data``."""
    directory = _data_dir()
    if not directory.is_dir():
        return []
    return sorted(entry.name for entry in directory.iterdir() if entry.is_file())


def bundled_path(name: str) -> Path:
    """Path of a bundled data file, e.g. ``bundled_path("squad_sample.jsonl")``.

    Raises:
        FileNotFoundError: listing the available names.
    """
    resource = _data_dir() / name
    if not name or "/" in name or "\\" in name or not resource.is_file():
        raise MissingFileError(f"no bundled data file {name!r}; available: {', '.join(available_bundled())}")
    return Path(str(resource))


def _bundled_qa_names() -> list[str]:
    names = {name for name, _ in BUNDLED_QA_FILES}
    names |= set(BUNDLED_QA_FILES.values())
    return sorted(names)


def _resolve_bundled_qa(name: str, split: str | None) -> Path | None:
    splits = sorted({s for n, s in BUNDLED_QA_FILES if n == name})
    if splits:
        key = (name, split or "validation")
        if key not in BUNDLED_QA_FILES:
            raise ConfigError(f"bundled QA set {name!r} has no split {split!r}; available splits: {', '.join(splits)}")
        return bundled_path(BUNDLED_QA_FILES[key])
    file_name = name if name.endswith(".jsonl") else f"{name}.jsonl"
    if file_name in BUNDLED_QA_FILES.values():
        if split is not None:
            raise ConfigError(f"split={split!r} does not apply to the bundled file {file_name!r}")
        return bundled_path(file_name)
    return None


def _resolve_source(path_or_name: str | Path, split: str | None) -> Path:
    path = Path(path_or_name)
    if path.is_file():
        if split is not None:
            raise ConfigError(f"split={split!r} only applies to bundled names; pass the JSONL file of that split")
        return path
    bundled = _resolve_bundled_qa(str(path_or_name), split) if isinstance(path_or_name, str) else None
    if bundled is not None:
        return bundled
    raise MissingFileError(
        f"{str(path_or_name)!r} is neither an existing JSONL file nor a bundled QA name "
        f"({', '.join(_bundled_qa_names())})"
    )


# ---------------------------------------------------------------------------------------------- loading


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a (optionally gzipped) JSONL file, one per non-empty line; a malformed line raises a
    `ValueError` naming it. Plain `json`, so reading QA data needs no `datasets` install."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for index, line in enumerate(line for line in handle if line.strip()):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"QA record #{index} of {path} is not valid JSON ({error}); expected {QA_FORMAT}"
                                 ) from None
    return rows


def sample_indices(n: int, limit: int | None, seed: int = 0) -> list[int]:
    """Indices of ``limit`` of ``n`` items: a prefix of a seeded shuffle (all indices in order if ``limit`` is None).

    A smaller ``limit`` with the same seed always gives a prefix of a larger one.
    """
    if limit is None:
        return list(range(n))
    if limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    indices = list(range(n))
    random.Random(seed).shuffle(indices)
    return indices[:limit]


def load_qa_records(
    path_or_name: str | Path, split: str | None = None, limit: int | None = None, seed: int = 0
) -> list[QARecord]:
    """Load and validate QA records from a JSONL file or a bundled sample.

    Args:
        path_or_name: a JSONL file in the shared QA format (read with ``datasets.load_dataset("json", ...)``), or a
            bundled name: ``"squad"``, ``"hotpotqa"``, ``"musique"``, ``"nq_open"`` or a bundled file name such as
            ``"squad_train_sample.jsonl"``.
        split: for bundled names only: ``"validation"`` (default) or ``"train"`` (``"squad"`` only).
        limit: if given, return this many records drawn by a seeded shuffle (see :func:`sample_indices`);
            otherwise all records in file order.
        seed: shuffle seed used with ``limit``.

    Raises:
        ValueError: for a malformed record (naming its index, id and field) or an unknown split.
        FileNotFoundError: if ``path_or_name`` is neither a file nor a bundled name.
    """
    path = _resolve_source(path_or_name, split)
    rows = _read_jsonl(path)
    records = [QARecord.from_dict(row, index=index) for index, row in enumerate(rows)]
    return [records[index] for index in sample_indices(len(records), limit, seed)]


def load_sample_context() -> list[QARecord]:
    """The quickstart/demo example: one short SQuAD paragraph with its questions, as records sharing a context."""
    data = json.loads(bundled_path(SAMPLE_CONTEXT_FILE).read_text(encoding="utf-8"))
    shared = {key: data[key] for key in ("source", "title", "context")}
    return [QARecord.from_dict({**shared, **qa}, index=index) for index, qa in enumerate(data["questions"])]


# ---------------------------------------------------------------------------------------------- SQuAD-512/1K/2K


def _count_tokens(tokenizer: Tokenizer, text: str) -> int:
    if hasattr(tokenizer, "encode"):
        return len(tokenizer.encode(text, add_special_tokens=False))
    return len(tokenizer(text))


def _balanced_cuts(lengths: Sequence[int], num_groups: int, separator_tokens: int) -> list[int]:
    """Start indices of ``num_groups`` consecutive groups whose token totals are as even as possible."""
    cumulative = [0]
    for length in lengths:
        cumulative.append(cumulative[-1] + length + separator_tokens)
    total = cumulative[-1]
    starts = [0]
    for group in range(1, num_groups):
        goal = total * group / num_groups
        # leave at least one paragraph for each group still to come
        candidates = range(starts[-1] + 1, len(lengths) - (num_groups - group) + 1)
        starts.append(min(candidates, key=lambda i: abs(cumulative[i] - goal)))
    return starts


def group_contexts(
    records: Sequence[QARecord],
    target_tokens: int,
    tokenizer: Tokenizer | Callable[[str], Sequence[int]],
    seed: int = 0,
    separator: str = "\n\n",
) -> list[QARecord]:
    """SQuAD with distractors (the SHINE paper's "SQuAD-512 / 1K / 2K").

    The unique contexts (paragraphs) of ``records`` are shuffled with ``seed`` and cut into consecutive groups
    whose concatenations average about ``target_tokens`` tokens. Each record's new context is its paragraph's
    group: the group's paragraphs in that seeded random order, joined by ``separator``. Records keep their order,
    ids, questions and answers; all records of one group share one context. ``target_tokens <= 0`` returns the
    records unchanged ("plain SQuAD": each paragraph alone).
    """
    if target_tokens <= 0:
        return list(records)
    paragraphs = list(dict.fromkeys(record.context for record in records))
    random.Random(seed).shuffle(paragraphs)
    if not paragraphs:
        return []
    lengths = [_count_tokens(tokenizer, paragraph) for paragraph in paragraphs]
    separator_tokens = _count_tokens(tokenizer, separator) if separator else 0
    total = sum(lengths) + separator_tokens * (len(paragraphs) - 1)
    num_groups = min(len(paragraphs), max(1, round(total / target_tokens)))
    starts = _balanced_cuts(lengths, num_groups, separator_tokens)
    group_of: dict[str, str] = {}
    for start, end in zip(starts, [*starts[1:], len(paragraphs)]):
        joined = separator.join(paragraphs[start:end])
        group_of.update(dict.fromkeys(paragraphs[start:end], joined))
    return [dataclasses.replace(record, context=group_of[record.context]) for record in records]


# ---------------------------------------------------------------------------------------------- held-out splits


def _article_components(records: Sequence[QARecord]) -> dict[str, str]:
    """Map every article title to a representative, joining titles that appear in the same record."""
    parent: dict[str, str] = {}

    def find(title: str) -> str:
        parent.setdefault(title, title)
        while parent[title] != title:
            parent[title] = parent[parent[title]]
            title = parent[title]
        return title

    for record in records:
        articles = record.articles or (record.title,)
        root = find(articles[0])
        for article in articles[1:]:
            parent[find(article)] = root
    return {title: find(title) for title in list(parent)}


def _component_of(record: QARecord, components: Mapping[str, str]) -> str:
    return components[(record.articles or (record.title,))[0]]


def _pick_eval_components(
    records: Sequence[QARecord], components: Mapping[str, str], eval_fraction: float, seed: int
) -> set[str]:
    sizes: dict[str, int] = {}
    for record in records:
        key = _component_of(record, components)
        sizes[key] = sizes.get(key, 0) + 1
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    chosen: set[str] = set()
    goal = eval_fraction * len(records)
    for key in order[: max(1, len(order) - 1)]:
        if chosen and sum(sizes[k] for k in chosen) >= goal:
            break
        chosen.add(key)
    return chosen


def held_out_split(
    records: Sequence[QARecord],
    eval_fraction: float | None = None,
    eval_titles: Iterable[str] | None = None,
    seed: int = 0,
) -> tuple[list[QARecord], list[QARecord]]:
    """Split records into (train, eval) by whole article, so training never sees an evaluation article.

    Records are grouped by article title; a multi-hop record (titles joined by ``" | "``) ties its articles
    together, so no article is on both sides. Give exactly one of:

    * ``eval_titles``: the articles to evaluate on (every group touching one of them goes to eval);
    * ``eval_fraction``: article groups are taken in a seeded random order until at least this fraction of the
      records is in eval (at least one group, and at least one group is left for training when there are two).

    Raises:
        ValueError: if both or neither option is given, the fraction is outside (0, 1), or a title is unknown.
    """
    if (eval_fraction is None) == (eval_titles is None):
        raise ConfigError("give exactly one of eval_fraction or eval_titles")
    components = _article_components(records)
    if eval_titles is not None:
        wanted = set(eval_titles)
        unknown = sorted(wanted - set(components))
        if unknown:
            raise ConfigError(f"unknown eval titles {unknown}; known titles include {sorted(components)[:10]}")
        eval_keys = {components[title] for title in wanted}
    else:
        if not 0.0 < eval_fraction < 1.0:
            raise ConfigError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        eval_keys = _pick_eval_components(records, components, eval_fraction, seed)
    train = [record for record in records if _component_of(record, components) not in eval_keys]
    evaluation = [record for record in records if _component_of(record, components) in eval_keys]
    return train, evaluation


def load_qa_source(source: str) -> list[QARecord]:
    """QA records of a JSONL file, a bundled name (optionally ``name:split``, e.g. ``squad:train``) or a Hub
    dataset id (optionally ``id:split``; default split ``train``) whose rows have ``context``, ``question`` and
    ``answers`` (a list of strings, or SQuAD's ``{"text": [...]}``)."""
    if Path(source).is_file():
        return load_qa_records(source)
    name, _, split = source.partition(":")
    if name in _bundled_qa_names() or name.endswith(".jsonl"):
        return load_qa_records(name, split=split or None)
    return hub_qa_records(name, split or "train")


def hub_qa_records(dataset_id: str, split: str = "train") -> list[QARecord]:
    """QA records of a Hub dataset (through the `datasets` cache, so offline mode works with a warm cache)."""
    import datasets  # heavy, and only Hub datasets need it: loaded on first use

    rows = datasets.load_dataset(dataset_id, split=split)
    missing = {"context", "question", "answers"} - set(rows.column_names)
    if missing:
        raise DataError(f"The Hub dataset {dataset_id!r} has no column(s) {sorted(missing)}; a QA dataset needs "
                        f"context, question and answers (e.g. rajpurkar/squad).")
    records = []
    for index, row in enumerate(rows):
        answers = row["answers"]["text"] if isinstance(row["answers"], Mapping) else row["answers"]
        row = {**row, "id": str(row.get("id") or f"{dataset_id}-{index}"), "source": dataset_id,
               "title": row.get("title") or dataset_id, "answers": list(answers)}
        records.append(QARecord.from_dict(row, index=index))
    return records
