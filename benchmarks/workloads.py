"""Shared inputs for the benchmarks: real text of a given token length and chat prompts."""

from __future__ import annotations

from peft_shine.qa_data import bundled_path, load_qa_records


def context_of_length(tokenizer, tokens: int) -> str:
    """Real prose (bundled WikiText paragraphs, concatenated) cut to exactly ``tokens`` tokens."""
    import json

    ids: list[int] = []
    with open(bundled_path("wikitext_sample.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            ids += tokenizer(json.loads(line)["text"] + "\n\n", add_special_tokens=False).input_ids
            if len(ids) >= tokens:
                break
    text = tokenizer.decode(ids[:tokens])
    while len(tokenizer(text, add_special_tokens=False).input_ids) > tokens:  # decode/encode may not round-trip
        text = text[:-1]
    return text


def squad_questions(count: int) -> tuple[str, list[str]]:
    """A held-out SQuAD paragraph and up to ``count`` of its questions."""
    records = load_qa_records("squad")
    context = records[0].context
    return context, [r.question for r in records if r.context == context][:count]
