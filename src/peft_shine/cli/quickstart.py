"""``shine quickstart``: generate an adapter for a bundled context on the default base and answer with it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from peft_shine.cli.defaults import DEFAULT_BASE_MODEL
from peft_shine.cli.options import add_device_options, placement_from_args
from peft_shine.errors import DataError


DESCRIPTION = ("Generate an adapter from a bundled, held-out SQuAD paragraph with the shipped hypernetwork, save "
               "it, and print its answers beside the base model without the context, with the context in the "
               "prompt, and an adapter generated from an unrelated paragraph (the wrong-context control), with "
               "timings and token F1.")


WRONG_CONTEXT = "wrong_context"  # the control adapter's name and condition
WRONG_CONTEXT_LABEL = "adapter of an unrelated context"


def unrelated_context(title: str) -> tuple[str, str]:
    """``(title, context)`` of the first bundled SQuAD-train paragraph of another article than ``title``: the
    wrong-context control (an adapter of the same kind, carrying nothing about the questions)."""
    from peft_shine.qa_data import bundled_path  # with the library, when the command runs

    for line in bundled_path("squad_train_sample.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["title"] != title:
            return record["title"], record["context"]
    raise DataError(f"No bundled paragraph of an article other than {title!r}.")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shine quickstart``."""
    parser = subparsers.add_parser("quickstart", help="generate an adapter for a sample context and answer with it",
                                   description=DESCRIPTION)
    parser.add_argument("--hypernetwork", default=None,
                        help="SHINE checkpoint (folder or Hub id); default: the shipped one, else an untrained one")
    parser.add_argument("--base", default=DEFAULT_BASE_MODEL, help="base LM for an untrained hypernetwork")
    parser.add_argument("--output", default="quickstart-adapter",
                        help="where to save the generated adapter (a previous adapter folder there is replaced; any "
                             "other non-empty folder or file is refused)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the adapter files into a non-empty --output folder, keeping its other files")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="greedy decoding budget per answer")
    add_device_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``shine quickstart``."""
    # the library (torch, transformers, peft): loaded when the command runs, not to parse it
    from peft_shine.prompting import COMPARISON, build_prompt, compare_answers, generate_answers
    from peft_shine.qa_data import load_sample_context
    from peft_shine.shipped import load_hypernetwork
    from peft_shine.storage.save_targets import write_mode

    write_mode(args.output, overwrite=args.overwrite)  # refuse a target that must not be written before any work
    started = time.perf_counter()
    placement = placement_from_args(args)
    loaded = load_hypernetwork(args.hypernetwork, base_model=args.base, **placement.base_options())
    shine, label = loaded.model, loaded.label
    print(f"Loaded {label} for {shine.config.base_model_name_or_path} in {time.perf_counter() - started:.1f} s")
    records = load_sample_context()
    context = records[0].context
    tokens = len(shine.tokenizer(context, add_special_tokens=False).input_ids)
    print(f"\nContext ({records[0].title}, {tokens} tokens):\n{context}\n")

    started = time.perf_counter()
    model = shine.generate_adapter(context)
    seconds = time.perf_counter() - started
    path = shine.save_adapter(Path(args.output), overwrite=args.overwrite)
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"Adapter generated in {seconds:.2f} s (one forward pass), {size / 1e6:.1f} MB, saved to {path}/")

    other_title, other = unrelated_context(records[0].title)
    shine.generate_adapter(other, adapter_names=WRONG_CONTEXT)
    print(f"Control: an adapter generated the same way from an unrelated paragraph ({other_title}), so the "
          f"difference between the two adapters is what the context itself contributed.")
    questions = [record.question for record in records]
    comparison = compare_answers(model, shine.tokenizer, questions, context, max_new_tokens=args.max_new_tokens,
                                 timed=True)
    comparison.answers[WRONG_CONTEXT] = generate_answers(
        model, shine.tokenizer, [build_prompt(shine.tokenizer, q) for q in questions], [WRONG_CONTEXT] * len(questions),
        args.max_new_tokens)
    labels = {"adapter": COMPARISON["adapter"], WRONG_CONTEXT: WRONG_CONTEXT_LABEL,
              **{c: name for c, name in COMPARISON.items() if c != "adapter"}}
    for index, record in enumerate(records):
        print(f"\nQ: {record.question}   (gold: {record.answers[0]})")
        for condition, name in labels.items():
            print(f"  {name:32s} {comparison.answers[condition][index]}")
    short = {condition: name.split(" (")[0] for condition, name in labels.items()}
    print("\nAnswer time for all questions: " + ", ".join(
        f"{short[c]} {seconds:.1f} s" for c, seconds in comparison.seconds.items()))
    print(f"Token F1 against the gold answers ({len(records)} questions: a demonstration, not a measurement): "
          + ", ".join(f"{short[c]} {mean_f1(comparison.answers[c], records):.0f}" for c in labels))
    print("Held-out measurement (349 questions, with the wrong-context control): README, or `shine eval`.")
    return 0


def mean_f1(generations: list[str], records: list) -> float:
    """Mean SQuAD token F1 (×100) of the extracted answers (`shine eval`'s scoring)."""
    from peft_shine.evaluation.metrics import score_generation  # with the library, when the command runs

    scores = [score_generation(text, r.answers, r.source)["f1"] for text, r in zip(generations, records)]
    return 100.0 * sum(scores) / len(scores)
