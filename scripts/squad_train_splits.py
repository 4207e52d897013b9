"""Write the SQuAD-train splits of the distillation ablation and the long run (docs/training.md).

    python scripts/squad_train_splits.py --source squad.train.jsonl.gz --output runs/data

``--source`` is SQuAD v1.1 train in the shared QA format (JSON Lines, optionally gzipped) or a Hub dataset id
(``rajpurkar/squad``, converted: one record per question, its first answer text kept first). Articles are drawn by
seeded shuffles, so the same source always gives the same files:

* ``squad_train_60art.jsonl``: every record of 60 articles (seed 13), the stage-1 and stage-2 training pool;
* ``squad_train_heldout6.jsonl``: 6 further articles no run trains on (the held-out F1 of the ablation);
* ``squad_train_300ctx.jsonl``: 300 paragraphs of the pool (seed 5), the ablation's training data;
* ``squad_train_long.jsonl``: 1,400 other paragraphs of the pool (seed 7), the long run's QA phase.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path


def read_records(source: str) -> list[dict]:
    """Shared-format records from a (gzipped) JSONL file or the Hub's SQuAD layout."""
    path = Path(source)
    if path.is_file():
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    import datasets

    rows = datasets.load_dataset(source, split="train")
    return [{"id": row["id"], "source": "squad-v1.1-train", "title": row["title"], "context": row["context"],
             "question": row["question"], "answers": list(dict.fromkeys(row["answers"]["text"]))} for row in rows]


def paragraphs(records: list[dict], count: int, seed: int, exclude: set[str] = frozenset()) -> set[str]:
    """``count`` distinct contexts of ``records`` (not in ``exclude``), drawn by a seeded shuffle."""
    contexts = sorted({r["context"] for r in records} - exclude)
    random.Random(seed).shuffle(contexts)
    return set(contexts[:count])


def write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    print(f"{path}: {len(records)} questions on {len({r['context'] for r in records})} paragraphs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="squad.train.jsonl.gz")
    parser.add_argument("--output", default="runs/data")
    args = parser.parse_args()
    records = read_records(args.source)
    titles = sorted({r["title"] for r in records})
    random.Random(13).shuffle(titles)
    pool_titles, held_titles = set(titles[:60]), set(titles[60:66])
    pool = [r for r in records if r["title"] in pool_titles]
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    write(output / "squad_train_60art.jsonl", pool)
    write(output / "squad_train_heldout6.jsonl", [r for r in records if r["title"] in held_titles])
    ablation = paragraphs(pool, 300, seed=5)
    write(output / "squad_train_300ctx.jsonl", [r for r in pool if r["context"] in ablation])
    long_run = paragraphs(pool, 1400, seed=7, exclude=ablation)
    write(output / "squad_train_long.jsonl", [r for r in pool if r["context"] in long_run])


if __name__ == "__main__":
    main()
