"""``shine eval``: every evaluation condition on the same QA records and base model; resumable; JSON/md/PNG report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from peft_shine.cli.defaults import (
    CONDITIONS,
    DEFAULT_BASE_MODEL,
    DEFAULT_CONDITIONS,
    DEFAULT_RECALL_MAX_NEW_TOKENS,
    RECALL_CONDITIONS,
    RECALL_MARGIN,
)
from peft_shine.cli.options import add_device_options, placement_from_args
from peft_shine.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shine eval``."""
    parser = subparsers.add_parser(
        "eval", help="compare the generated adapter with question-only, in-context, SFT and wrong-context baselines",
        description="Answer QA records under each condition with greedy decoding and write results.json, "
                    "results.md and results.png (the recall conditions ask for each context itself instead). "
                    "Rerun the same command to resume an interrupted run.")
    parser.add_argument("--hypernetwork", default=None,
                        help="SHINE checkpoint (folder or Hub id), or 'none' for an untrained hypernetwork; "
                             "default: the shipped one, else an untrained one")
    parser.add_argument("--base", default=DEFAULT_BASE_MODEL, help="base LM for an untrained hypernetwork")
    parser.add_argument("--data", default="squad",
                        help="a bundled QA name (squad, hotpotqa, musique, nq_open) or a JSONL file in the shared QA format")
    parser.add_argument("--split", default=None, help="split of a bundled name (validation or train)")
    parser.add_argument("--limit", type=int, default=None,
                        help="number of questions, drawn by --seed (default all); recall conditions run once per "
                             "distinct context of these questions")
    parser.add_argument("--seed", type=int, default=0, help="sampling, grouping, wrong-context and SFT seed")
    parser.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS),
                        help=f"comma-separated, in report order, from {', '.join(CONDITIONS)} (or 'all'), and "
                             f"the recall conditions {', '.join(RECALL_CONDITIONS)} (or 'recall')")
    parser.add_argument("--group-tokens", type=int, default=0,
                        help="group paragraphs with distractors into contexts of about N tokens "
                             "(512, 1024, 2048: SQuAD-512/1K/2K); 0 = each paragraph alone")
    parser.add_argument("--pad-tokens", default="",
                        help="long-context SQuAD: pad each question's paragraph with other articles' paragraphs to "
                             "about N tokens (comma-separated lengths run together, e.g. 512,1024,2048,4096)")
    parser.add_argument("--needle-multiples", default="1,2,4,8",
                        help="with --data needle: haystack lengths in multiples of the chunk size")
    parser.add_argument("--chunk-tokens", type=int, default=0,
                        help="make SHINE adapters of long contexts chunk-wise, N tokens per chunk (0 = off)")
    parser.add_argument("--chunk-overlap", type=int, default=0, help="tokens repeated between consecutive chunks")
    parser.add_argument("--chunk-combine", default="mean", choices=("cat", "mean", "svd"),
                        help="how chunk adapters combine into one (mean of the updates; cat = their exact sum)")
    parser.add_argument("--chunk-rank", type=int, default=None, help="rank budget of --chunk-combine svd")
    parser.add_argument("--output", default="eval-results", help="output folder (reused to resume)")
    parser.add_argument("--sft-steps", type=int, default=20, help="training steps of the SFT baseline per context")
    parser.add_argument("--sft-lr", type=float, default=2e-3, help="peak learning rate of the SFT baseline")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per generation batch")
    parser.add_argument("--adapter-batch-size", type=int, default=8, help="contexts per adapter-generation batch")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="greedy decoding budget per answer")
    parser.add_argument("--recall-max-new-tokens", type=int, default=DEFAULT_RECALL_MAX_NEW_TOKENS,
                        help=f"cap on the recall budget (a context's token count + {RECALL_MARGIN})")
    parser.add_argument("--truncate-contexts", action="store_true",
                        help="generate adapters from the first max_context_length tokens of longer contexts")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_options(parser)
    parser.set_defaults(func=run)


def load_for_eval(hypernetwork: str | None, base: str, **base_options: Any):
    """The hypernetwork to evaluate and a label for the report; ``"none"`` means a fresh, untrained one.
    ``base_options`` (``dtype``, ``device_map``) reach the base LM."""
    from peft_shine.shipped import load_hypernetwork  # the library: loaded when the command runs

    untrained = hypernetwork is not None and hypernetwork.lower() == "none"
    loaded = load_hypernetwork(base if untrained else hypernetwork, base_model=base, **base_options)
    return loaded.model, loaded.label


def check_data(args: argparse.Namespace) -> None:
    """Fail on a ``--data`` that names no bundled set, JSONL file or the needle test, and on malformed lengths,
    before any model loads (reading the QA file is cheap)."""
    from peft_shine.qa_data import load_qa_records  # plain JSON reading, no torch

    for flag in ("pad_tokens", "needle_multiples"):
        text = str(getattr(args, flag))
        if not all(part.strip().isdigit() for part in text.split(",") if part.strip()):
            raise ConfigError(f"--{flag.replace('_', '-')} takes comma-separated positive integers, got {text!r}")
    if args.data != "needle":
        load_qa_records(args.data, split=args.split, limit=args.limit, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    """Run ``shine eval``: check the arguments, load, evaluate, report."""
    check_data(args)
    # the library (torch, transformers, peft): loaded once the data is known to exist
    from peft_shine.evaluation import SFTConfig, group_contexts, resolve_conditions, run_evaluation
    from peft_shine.evaluation.long_context import records_for_cli
    from peft_shine.evaluation.report import RESULTS_CHART, RESULTS_JSON, RESULTS_MARKDOWN, markdown_table

    conditions = resolve_conditions(args.conditions)
    started = time.perf_counter()
    shine, label = load_for_eval(args.hypernetwork, args.base, **placement_from_args(args).base_options())
    print(f"Loaded {label} for {shine.config.base_model_name_or_path} in {time.perf_counter() - started:.1f} s")
    records, chunking = records_for_cli(args, shine)
    if args.group_tokens > 0:
        records = group_contexts(records, args.group_tokens, shine.tokenizer, seed=args.seed)
    metadata = {"hypernetwork": label, "data": str(args.data), "split": args.split, "limit": args.limit,
                "group_tokens": args.group_tokens, "pad_tokens": args.pad_tokens or None}
    results = run_evaluation(
        shine, records, conditions, args.output, batch_size=args.batch_size,
        adapter_batch_size=args.adapter_batch_size, max_new_tokens=args.max_new_tokens,
        recall_max_new_tokens=args.recall_max_new_tokens,
        sft=SFTConfig(steps=args.sft_steps, learning_rate=args.sft_lr), seed=args.seed,
        truncation=args.truncate_contexts, progress=not args.no_progress, metadata=metadata, chunking=chunking)
    meta = results["metadata"]
    print(f"\n{meta['num_questions']} questions, {meta['num_contexts']} contexts ({label})\n")
    print(markdown_table(results["aggregates"]))
    output = Path(args.output)
    print("Report: " + ", ".join(str(output / name) for name in (RESULTS_MARKDOWN, RESULTS_JSON, RESULTS_CHART)))
    return 0

