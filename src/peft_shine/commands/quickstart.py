"""``shine quickstart``: generate an adapter for a bundled context on the default base and answer with it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..base_models import DEFAULT_BASE_MODEL


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("quickstart", help="generate an adapter for a sample context and answer with it")
    parser.add_argument("--hypernetwork", default=None,
                        help="SHINE checkpoint (folder or Hub id); default: the shipped one, else an untrained one")
    parser.add_argument("--base", default=DEFAULT_BASE_MODEL, help="base LM for an untrained hypernetwork")
    parser.add_argument("--output", default="quickstart-adapter",
                        help="where to save the generated adapter (a previous adapter folder there is replaced; any "
                             "other non-empty folder or file is refused)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the adapter files into a non-empty --output folder, keeping its other files")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.set_defaults(func=run)


def load_hypernetwork(hypernetwork: str | None, base: str):
    """The requested or shipped hypernetwork, else a freshly initialised one; returns ``(model, label)``."""
    from ..auto import AutoShineModel
    from ..modeling_shine import ShineModel
    from ..shipped import shipped_checkpoint

    path = hypernetwork or shipped_checkpoint()
    if path is not None:
        return AutoShineModel.from_pretrained(str(path)), f"trained hypernetwork {path}"
    return ShineModel.from_base_model(base), "UNTRAINED hypernetwork (randomly initialised; no checkpoint shipped yet)"


def run(args: argparse.Namespace) -> int:
    from ..evaluation.qa_data import load_sample_context
    from ..prompting import BASE_ADAPTER, build_prompt, generate_answers
    from ..save_targets import write_mode

    write_mode(args.output, overwrite=args.overwrite)  # refuse a target that must not be written before any work
    started = time.perf_counter()
    shine, label = load_hypernetwork(args.hypernetwork, args.base)
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

    tokenizer = shine.tokenizer
    questions = [record.question for record in records]
    rows = {
        "adapter (no context in prompt)": ([build_prompt(tokenizer, q) for q in questions], ["default"]),
        "question only (base model)": ([build_prompt(tokenizer, q) for q in questions], [BASE_ADAPTER]),
        "context in prompt (base model)": ([build_prompt(tokenizer, q, context) for q in questions], [BASE_ADAPTER]),
    }
    answers, timings = {}, {}
    for name, (prompts, adapter) in rows.items():
        started = time.perf_counter()
        answers[name] = generate_answers(model, tokenizer, prompts, adapter * len(prompts), args.max_new_tokens)
        timings[name] = time.perf_counter() - started
    for index, record in enumerate(records):
        print(f"\nQ: {record.question}   (gold: {record.answers[0]})")
        for name in rows:
            print(f"  {name:32s} {answers[name][index]}")
    print("\nAnswer time for all questions: " + ", ".join(f"{k.split(' (')[0]} {v:.1f} s" for k, v in timings.items()))
    print("Token F1 against the gold answers: " + ", ".join(
        f"{name.split(' (')[0]} {mean_f1(answers[name], records):.0f}" for name in rows))
    return 0


def mean_f1(generations: list[str], records: list) -> float:
    """Mean SQuAD token F1 (×100) of the extracted answers (`shine eval`'s scoring)."""
    from ..evaluation.metrics import score_generation

    scores = [score_generation(text, r.answers, r.source)["f1"] for text, r in zip(generations, records)]
    return 100.0 * sum(scores) / len(scores)
