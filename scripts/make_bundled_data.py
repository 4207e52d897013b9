"""Regenerate the small data files bundled in ``src/peft_shine/assets/data`` from the shared data folder.

Usage::

    python scripts/make_bundled_data.py /work/shared/data [--out src/peft_shine/assets/data]

The selection is deterministic (fixed article lists, fixed seeds). QA and WikiText records are copied as verbatim
lines of the shared JSONL files; only ``sample_context.json`` is assembled (from one SQuAD paragraph and its
questions). The folder's ``README.md`` (provenance, licences, selection, sha256) is written last.

This is a development tool: the library never imports it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path


SEED = 0
HELD_OUT_ARTICLES = ("Normans", "Pharmacy", "Sky_(United_Kingdom)")
TRAIN_ARTICLES = ("Geology", "Intergovernmental_Panel_on_Climate_Change")
SAMPLE_CONTEXT_ARTICLE = "Normans"
SAMPLE_CONTEXT_QUESTIONS = 4
HOTPOT_YES_NO, HOTPOT_OTHER = 4, 26
MUSIQUE_COUNT = 30
NQ_COUNT = 50
WIKITEXT_COUNT, WIKITEXT_PER_ARTICLE = 300, 3

# sha256 of the shared inputs, as listed in the shared data README
EXPECTED_INPUTS = {
    "squad.dev.jsonl": "e8859e2af8df376f0f698d429197657f5580f54ae1417699ad56e285dbf0316b",
    "hotpotqa.dev.jsonl": "d390847e281bb2a4ff69ed57f1ff113cfc5d0aaeea9c98d4f263fb73808b62fa",
    "musique.dev.jsonl": "44cc484522a38ac22f03651facc946535e05b5abc14708bb47952f4ea651ff62",
    "nq_open.dev.jsonl": "1408400905ab84038fc8868f67b98331c839089a237900bcd2c0fef935e8b295",
    "wikitext2.paragraphs.jsonl": "d9333b114b7d29d39ab7aaf0160a9aa90050aeef687b70908519fe72042f1b5d",
}

SQUAD_CREDIT = (
    "SQuAD v1.1 (Rajpurkar, Zhang, Lopyrev and Liang, *SQuAD: 100,000+ Questions for Machine Comprehension of "
    "Text*, EMNLP 2016), development set. Upstream copy: the unmodified official `dev-v1.1.json` (sha256 "
    "`95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9`). Licence: "
    "[CC BY-SA 4.0](https://creativecommons.org/licenses/by-sa/4.0/)."
)
HOTPOT_CREDIT = (
    "HotpotQA (Yang, Qi, Zhang, Bengio, Cohen, Salakhutdinov and Manning, *HotpotQA: A Dataset for Diverse, "
    "Explainable Multi-hop Question Answering*, EMNLP 2018), development set (distractor and fullwiki settings). "
    "Upstream copies: `data/hotpot.json` of GitHub `AdelWang/MIGRES` (distractor) and `data/hotpotqa/test.json` of "
    "`JianGuanTHU/AMOR` (fullwiki). Licence: [CC BY-SA 4.0](https://creativecommons.org/licenses/by-sa/4.0/)."
)
MUSIQUE_CREDIT = (
    "MuSiQue-Ans v1.0 (Trivedi, Balasubramanian, Khot and Sabharwal, *MuSiQue: Multihop Questions via Single-hop "
    "Question Composition*, TACL 2022), 2-4 hop answerable questions with their Wikipedia paragraphs (supporting "
    "and distractor; some distractors removed upstream of the shared file). Upstream copy: `data/musique.json` of "
    "GitHub `AdelWang/MIGRES` (commit `a261f2b30ad5ff31e21c1c5fdc1763de738c1958`). Licence: "
    "[CC BY 4.0](https://creativecommons.org/licenses/by/4.0/)."
)
NQ_CREDIT = (
    "Natural Questions (Kwiatkowski et al., *Natural Questions: a Benchmark for Question Answering Research*, "
    "TACL 2019), open version NQ-Open (Lee, Chang and Toutanova, ACL 2019), gold passages as released by Liu et "
    "al., *Lost in the Middle*, TACL 2024 (`qa_data/nq-open-oracle.jsonl.gz` of GitHub "
    "`nelson-liu/lost-in-the-middle`). Licence: [CC BY-SA 3.0](https://creativecommons.org/licenses/by-sa/3.0/)."
)
WIKITEXT_CREDIT = (
    "WikiText-2 raw (Merity, Xiong, Bradbury and Socher, *Pointer Sentinel Mixture Models*, arXiv:1609.07843, "
    "2016), validation and test articles (`wiki.valid.raw` / `wiki.test.raw` of GitHub `DRAGNLabs/LLMHumanModeling`), "
    "detokenised into paragraphs, text from Wikipedia. Licence: "
    "[CC BY-SA 3.0](https://creativecommons.org/licenses/by-sa/3.0/)."
)


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a JSONL file, verbatim, each ending in a newline."""
    with path.open(encoding="utf-8") as handle:
        return [line if line.endswith("\n") else line + "\n" for line in handle if line.strip()]


def line_ranges(numbers: list[int]) -> str:
    """Compact 1-based line ranges, e.g. ``1-3, 7``."""
    parts: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if number is not None:
            start = previous = number
    return ", ".join(parts)


def check_inputs(shared: Path) -> None:
    """Fail unless the shared inputs are the documented versions."""
    for name, expected in EXPECTED_INPUTS.items():
        actual = sha256(shared / name)
        if actual != expected:
            sys.exit(f"{shared / name}: sha256 {actual} differs from the documented {expected}")


def select_articles(lines: list[str], titles: tuple[str, ...]) -> list[int]:
    """0-based indices of the lines whose record title is one of ``titles`` (file order)."""
    return [index for index, line in enumerate(lines) if json.loads(line)["title"] in titles]


def select_hotpot(lines: list[str]) -> list[int]:
    """A seeded sample of yes/no and other questions, in file order."""
    is_yes_no = [json.loads(line)["answers"] in (["yes"], ["no"]) for line in lines]
    yes_no = [index for index, flag in enumerate(is_yes_no) if flag]
    other = [index for index, flag in enumerate(is_yes_no) if not flag]
    rng = random.Random(SEED)
    return sorted(rng.sample(yes_no, HOTPOT_YES_NO) + rng.sample(other, HOTPOT_OTHER))


def select_musique(lines: list[str]) -> list[int]:
    """A seeded sample of MuSiQue records, in file order."""
    return sorted(random.Random(SEED).sample(range(len(lines)), MUSIQUE_COUNT))


def hop_counts(lines: list[str], indices: list[int]) -> str:
    """``"N two-hop, ..."`` from the MuSiQue id prefixes (``2hop__...``)."""
    hops = [json.loads(lines[index])["id"].split("hop", 1)[0] for index in indices]
    words = {"2": "two", "3": "three", "4": "four"}
    return ", ".join(f"{hops.count(h)} {words.get(h, h)}-hop" for h in sorted(set(hops)))


def select_nq(lines: list[str]) -> list[int]:
    """A seeded sample of NQ-Open records, in file order."""
    return sorted(random.Random(SEED).sample(range(len(lines)), NQ_COUNT))


def select_wikitext(lines: list[str]) -> list[int]:
    """The first paragraphs of each article, in file order, until the count is reached."""
    chosen: list[int] = []
    per_article: dict[str, int] = {}
    for index, line in enumerate(lines):
        title = json.loads(line)["title"]
        if per_article.get(title, 0) < WIKITEXT_PER_ARTICLE:
            per_article[title] = per_article.get(title, 0) + 1
            chosen.append(index)
        if len(chosen) == WIKITEXT_COUNT:
            break
    return chosen


def make_sample_context(lines: list[str], indices: list[int]) -> dict:
    """The first paragraph of the sample article with its first questions."""
    records = [json.loads(lines[index]) for index in indices]
    records = [record for record in records if record["title"] == SAMPLE_CONTEXT_ARTICLE]
    context = records[0]["context"]
    questions = [record for record in records if record["context"] == context][:SAMPLE_CONTEXT_QUESTIONS]
    return {
        "source": records[0]["source"],
        "title": SAMPLE_CONTEXT_ARTICLE,
        "licence": "CC BY-SA 4.0 (SQuAD v1.1); see README.md",
        "context": context,
        "questions": [{key: record[key] for key in ("id", "question", "answers")} for record in questions],
    }


def write_lines(path: Path, lines: list[str], indices: list[int]) -> None:
    """Write the chosen lines verbatim."""
    path.write_text("".join(lines[index] for index in indices), encoding="utf-8")


def titles_of(lines: list[str], indices: list[int]) -> list[str]:
    """Distinct record titles in order of first appearance."""
    return list(dict.fromkeys(json.loads(lines[index])["title"] for index in indices))


def build(shared: Path, out: Path) -> dict[str, str]:
    """Write every bundled file; return a README section per file."""
    out.mkdir(parents=True, exist_ok=True)
    squad = read_lines(shared / "squad.dev.jsonl")
    hotpot = read_lines(shared / "hotpotqa.dev.jsonl")
    musique = read_lines(shared / "musique.dev.jsonl")
    nq = read_lines(shared / "nq_open.dev.jsonl")
    wiki = read_lines(shared / "wikitext2.paragraphs.jsonl")
    held_out, train = select_articles(squad, HELD_OUT_ARTICLES), select_articles(squad, TRAIN_ARTICLES)
    chosen_hotpot, chosen_nq, chosen_wiki = select_hotpot(hotpot), select_nq(nq), select_wikitext(wiki)
    chosen_musique = select_musique(musique)
    write_lines(out / "squad_sample.jsonl", squad, held_out)
    write_lines(out / "squad_train_sample.jsonl", squad, train)
    write_lines(out / "hotpotqa_sample.jsonl", hotpot, chosen_hotpot)
    write_lines(out / "musique_sample.jsonl", musique, chosen_musique)
    write_lines(out / "nq_open_sample.jsonl", nq, chosen_nq)
    write_lines(out / "wikitext_sample.jsonl", wiki, chosen_wiki)
    sample = make_sample_context(squad, held_out)
    (out / "sample_context.json").write_text(json.dumps(sample, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

    def squad_section(indices: list[int], role: str) -> str:
        counts = {
            title: sum(json.loads(squad[i])["title"] == title for i in indices) for title in titles_of(squad, indices)
        }
        listing = ", ".join(f"`{title}` ({count} questions)" for title, count in counts.items())
        return (
            f"{role} All questions of the articles {listing}: {len(indices)} records on "
            f"{len({json.loads(squad[i])['context'] for i in indices})} paragraphs, lines "
            f"{line_ranges([i + 1 for i in indices])} of `squad.dev.jsonl`, copied verbatim.\n\n{SQUAD_CREDIT}"
        )

    hotpot_yes_no = sum(json.loads(hotpot[i])["answers"] in (["yes"], ["no"]) for i in chosen_hotpot)
    wiki_titles = titles_of(wiki, chosen_wiki)
    first_wiki, last_wiki = json.loads(wiki[chosen_wiki[0]])["id"], json.loads(wiki[chosen_wiki[-1]])["id"]
    return {
        "squad_sample.jsonl": squad_section(held_out, "Held-out evaluation articles (never use them for training)."),
        "squad_train_sample.jsonl": squad_section(train, "Training articles for tiny training tests."),
        "hotpotqa_sample.jsonl": (
            f"{len(chosen_hotpot)} records ({hotpot_yes_no} yes/no): a `random.Random({SEED})` sample of "
            f"{HOTPOT_YES_NO} yes/no and then {HOTPOT_OTHER} other questions of `hotpotqa.dev.jsonl`, lines "
            f"{line_ranges([i + 1 for i in chosen_hotpot])}, copied verbatim.\n\n{HOTPOT_CREDIT}"
        ),
        "musique_sample.jsonl": (
            f"{len(chosen_musique)} records ({hop_counts(musique, chosen_musique)}): `random.Random({SEED}).sample` "
            f"of the lines of `musique.dev.jsonl`, lines {line_ranges([i + 1 for i in chosen_musique])}, copied "
            f"verbatim.\n\n{MUSIQUE_CREDIT}"
        ),
        "nq_open_sample.jsonl": (
            f"{len(chosen_nq)} records: `random.Random({SEED}).sample` of the lines of `nq_open.dev.jsonl`, lines "
            f"{line_ranges([i + 1 for i in chosen_nq])}, copied verbatim.\n\n{NQ_CREDIT}"
        ),
        "wikitext_sample.jsonl": (
            f"{len(chosen_wiki)} paragraphs: the first {WIKITEXT_PER_ARTICLE} paragraphs (fewer if the article has "
            f"fewer) of each article of `wikitext2.paragraphs.jsonl` in file order, until {WIKITEXT_COUNT}; "
            f"{len(wiki_titles)} articles, ids `{first_wiki}` … `{last_wiki}`, lines copied verbatim (keys `id`, "
            f"`split`, `title`, `section`, `text`).\n\n{WIKITEXT_CREDIT}"
        ),
        "sample_context.json": (
            f"The first paragraph of the held-out article `{SAMPLE_CONTEXT_ARTICLE}` with its first "
            f"{SAMPLE_CONTEXT_QUESTIONS} questions ({', '.join(q['id'] for q in sample['questions'])}); context, "
            f"questions and answers verbatim from `squad.dev.jsonl`, for `shine quickstart` and the demo.\n\n"
            f"{SQUAD_CREDIT}"
        ),
    }


README_HEAD = """# Bundled sample data

Small, real samples of public QA datasets and prose, shipped inside the package so that tests, the quickstart and
the demo never need the shared data folder or a network. They were selected from the project's shared data
folder (which documents the upstream copies and the conversion to the QA JSONL format) by
`scripts/make_bundled_data.py`, which regenerates every file here deterministically:

    python scripts/make_bundled_data.py /path/to/shared/data

**Licences.** The data files are not covered by the project's Apache-2.0 licence. Each keeps its upstream
licence (CC BY-SA 4.0, CC BY 4.0 or CC BY-SA 3.0, listed per file below); share-alike terms apply to redistributions of
these files. Changes made: conversion to one JSON record per question (see the shared data README) and selection
of the subsets described below; records are otherwise unmodified. Contamination note: these are well-known public
benchmarks that pretrained models may have seen.

QA files use the shared format: one JSON object per line with `id`, `source`, `title`, `context`, `question` and
`answers` (all acceptable gold strings). Load them with `peft_shine.evaluation.load_qa_records`.
"""


def write_readme(out: Path, sections: dict[str, str]) -> None:
    """Write README.md with a per-file section and a table of sizes and sha256."""
    rows = ["| file | bytes | records | sha256 |", "| --- | ---: | ---: | --- |"]
    for name in sections:
        path = out / name
        records = len(read_lines(path)) if name.endswith(".jsonl") else 1
        rows.append(f"| `{name}` | {path.stat().st_size:,} | {records} | `{sha256(path)}` |")
    inputs = [f"- `{name}`: sha256 `{digest}`" for name, digest in EXPECTED_INPUTS.items()]
    body = [README_HEAD, "## Files\n", "\n".join(rows), "", "Shared input files:\n", "\n".join(inputs), ""]
    for name, text in sections.items():
        body += [f"## `{name}`\n", text, ""]
    (out / "README.md").write_text("\n".join(body), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared_data", type=Path, help="the shared data folder (with squad.dev.jsonl, ...)")
    default_out = Path(__file__).resolve().parents[1] / "src" / "peft_shine" / "assets" / "data"
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    args = parser.parse_args(argv)
    check_inputs(args.shared_data)
    sections = build(args.shared_data, args.out)
    write_readme(args.out, sections)
    total = sum((args.out / name).stat().st_size for name in sections)
    print(f"wrote {len(sections)} files ({total:,} bytes) and README.md to {args.out}")


if __name__ == "__main__":
    main()
