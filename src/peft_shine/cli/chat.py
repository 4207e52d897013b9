"""``shine chat``: turn a context into an adapter, then chat with it in the terminal (the context is not in the
prompt). Questions come from ``--question`` flags or, interactively, from standard input; ``--compare`` also shows
the base model's answers without and with the context in the prompt.

Examples::

    shine chat --context-file notes.txt
    shine chat --context "The Eiffel Tower was finished in 1889." --question "When was it finished?" --compare
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from peft_shine.cli.defaults import DEFAULT_BASE_MODEL
from peft_shine.cli.options import add_device_options, placement_from_args
from peft_shine.errors import ConfigError, DataError, MissingFileError


MAX_HISTORY_TURNS = 4  # earlier exchanges kept in the prompt
DESCRIPTION = ("Turn a context into an adapter, then chat with it in the terminal (the context is not in the "
               "prompt). Questions come from --question flags or, interactively, from standard input; --compare "
               "also shows the base model's answers without and with the context in the prompt.")
EPILOG = """examples:
  shine chat --context-file notes.txt
  shine chat --context "The Eiffel Tower was finished in 1889." --question "When was it finished?" --compare"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shine chat``."""
    parser = subparsers.add_parser("chat", help="generate an adapter from a context and chat with it",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--context", default=None, help="the context text")
    source.add_argument("--context-file", default=None, help="a UTF-8 text file holding the context")
    parser.add_argument("--question", action="append", default=[],
                        help="ask this and exit (repeatable); without it, questions are read from standard input")
    parser.add_argument("--hypernetwork", default=None,
                        help="SHINE checkpoint (folder or Hub id); default: the shipped one, else an untrained one")
    parser.add_argument("--base", default=DEFAULT_BASE_MODEL, help="base LM for an untrained hypernetwork")
    parser.add_argument("--compare", action="store_true",
                        help="also answer with the base model alone and with the context in the prompt")
    parser.add_argument("--save-adapter", default=None, metavar="DIR",
                        help="also save the adapter (a LoRA folder; a previous adapter folder there is replaced, any "
                             "other non-empty folder or file is refused)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write the adapter files into a non-empty --save-adapter folder, keeping its other files")
    parser.add_argument("--truncate", action="store_true", help="keep the first max_context_length context tokens")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="greedy decoding budget per answer")
    add_device_options(parser)
    parser.set_defaults(func=run)


def read_context(args: argparse.Namespace) -> tuple[str, str]:
    """``(context, where it came from)``: ``--context``, ``--context-file`` or the bundled sample context."""
    if args.context is not None:
        return args.context, "--context"
    if args.context_file is not None:
        path = Path(args.context_file)
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; pass a UTF-8 text file to --context-file")
        if not path.is_file():
            raise MissingFileError(f"no such file {path}; pass an existing UTF-8 text file to --context-file")
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as error:
            raise DataError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); pass --context-file "
                            f"a UTF-8 text file") from None

    from peft_shine.qa_data import load_sample_context  # the bundled data, read only when no context is given

    record = load_sample_context()[0]
    return record.context, f"the bundled sample context ({record.title}); pass --context or --context-file"


def questions(args: argparse.Namespace) -> Iterator[str]:
    """The ``--question`` flags, else non-empty lines typed on standard input (until EOF, 'exit' or 'quit')."""
    if args.question:
        yield from args.question
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("\nyou> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip().lower() in ("exit", "quit"):
            return
        if line.strip():
            yield line.strip()


def run(args: argparse.Namespace) -> int:
    """Run ``shine chat``."""
    context, origin = read_context(args)
    # the library (torch, transformers, peft): loaded once the arguments are known to be good
    from peft_shine.adapters.contexts import as_context_list
    from peft_shine.prompting import build_prompt, compare_answers, generate_answers
    from peft_shine.shipped import load_hypernetwork
    from peft_shine.storage.save_targets import write_mode

    as_context_list(context)  # empty or invalid text fails here, before any model is loaded
    if args.save_adapter:  # refuse a target that must not be written before any work
        write_mode(args.save_adapter, overwrite=args.overwrite)
    placement = placement_from_args(args)
    loaded = load_hypernetwork(args.hypernetwork, base_model=args.base, **placement.base_options())
    shine, label = loaded.model, loaded.label
    tokens = len(shine.tokenizer(context, add_special_tokens=False).input_ids)
    print(f"Loaded {label}. Context: {origin}, {tokens} tokens.")
    started = time.perf_counter()
    model = shine.generate_adapter(context, truncation=args.truncate)
    print(f"Adapter generated in {time.perf_counter() - started:.2f} s. Ask questions (exit or Ctrl-D to stop).")
    if args.save_adapter:
        print(f"Adapter saved to {shine.save_adapter(Path(args.save_adapter), overwrite=args.overwrite)}/")
    tokenizer, history = shine.tokenizer, []
    for question in questions(args):
        started = time.perf_counter()
        if args.compare:
            comparison = compare_answers(model, tokenizer, [question], context, history=history[-2 * MAX_HISTORY_TURNS:],
                                         max_new_tokens=args.max_new_tokens)
            answer = comparison.answers["adapter"][0]
            print(f"adapter> {answer}\n  base model, no context> {comparison.answers['question_only'][0]}\n"
                  f"  base model, context in prompt> {comparison.answers['in_context'][0]}")
        else:
            prompt = build_prompt(tokenizer, question, history=history[-2 * MAX_HISTORY_TURNS:])
            answer = generate_answers(model, tokenizer, [prompt], ["default"], args.max_new_tokens)[0]
            print(f"adapter> {answer}   ({time.perf_counter() - started:.1f} s)")
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return 0
