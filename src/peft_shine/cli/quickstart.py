"""``shine quickstart``: generate an adapter for a bundled context on the default base and answer with it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from peft_shine.cli.defaults import DEFAULT_BASE_MODEL
from peft_shine.cli.options import add_device_options, placement_from_args


DESCRIPTION = ("Generate an adapter from a bundled, held-out SQuAD paragraph with the shipped hypernetwork, save "
               "it, and print its answers beside the base model without the context and with the context in the "
               "prompt, with timings and token F1.")


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
    from peft_shine.prompting import COMPARISON, compare_answers
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

    questions = [record.question for record in records]
    comparison = compare_answers(model, shine.tokenizer, questions, context, max_new_tokens=args.max_new_tokens,
                                 timed=True)
    for index, record in enumerate(records):
        print(f"\nQ: {record.question}   (gold: {record.answers[0]})")
        for condition, name in COMPARISON.items():
            print(f"  {name:32s} {comparison.answers[condition][index]}")
    short = {condition: name.split(" (")[0] for condition, name in COMPARISON.items()}
    print("\nAnswer time for all questions: " + ", ".join(
        f"{short[c]} {seconds:.1f} s" for c, seconds in comparison.seconds.items()))
    print(f"Token F1 against the gold answers ({len(records)} questions: a demonstration, not a measurement): "
          + ", ".join(f"{short[c]} {mean_f1(answers, records):.0f}" for c, answers in comparison.answers.items()))
    print("Held-out measurement (349 questions, with the wrong-context control): README, or `shine eval`.")
    return 0


def mean_f1(generations: list[str], records: list) -> float:
    """Mean SQuAD token F1 (×100) of the extracted answers (`shine eval`'s scoring)."""
    from peft_shine.evaluation.metrics import score_generation  # with the library, when the command runs

    scores = [score_generation(text, r.answers, r.source)["f1"] for text, r in zip(generations, records)]
    return 100.0 * sum(scores) / len(scores)
