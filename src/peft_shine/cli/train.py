"""``shine train``: train a SHINE hypernetwork, stage 1 (``pretrain``) or stage 2 (``instruct``); the parser's
description and examples say how (``shine train --help``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from peft_shine.cli.defaults import DEFAULT_BASE_MODEL, OBJECTIVES
from peft_shine.cli.options import add_device_options
from peft_shine.errors import MissingFileError


DESCRIPTION = """Train a SHINE hypernetwork: stage 1 (pretrain: reconstruct and continue texts) or stage 2 (instruct:
answer questions about a context it only sees through its adapter).

--config takes a JSON or YAML file of ShineTrainingArguments fields (any TrainingArguments field too) and an optional
'model' mapping of ShineConfig fields for a new hypernetwork (e.g. lora_rank). Flags on the command line win over the
file. Every field of ShineTrainingArguments and transformers' TrainingArguments is also a flag, written as the field
is named (--bf16, --deepspeed ds.json, --report_to wandb, --gradient_checkpointing, --push_to_hub --hub_model_id
me/shine): 'shine train --help-training' lists them. The output folder receives the final hypernetwork, Trainer
checkpoints and loss.png (training loss and the held-out losses with the adapter, a wrong-context adapter and no
adapter)."""
EPILOG = """examples:
  shine train --stage pretrain --data wikitext --output runs/stage1 --max-steps 500
  shine train --stage instruct --data squad:train --init-from runs/stage1 --output runs/stage2
  accelerate launch --config_file configs/accelerate-fsdp.yaml -m peft_shine.cli train --stage pretrain ...
    (several processes: docs/training.md and docs/gpu.md)"""
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".gz")  # --data values that must be local files


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shine train``."""
    parser = subparsers.add_parser("train", help="train a SHINE hypernetwork (stage 1 pretrain, stage 2 instruct)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["pretrain", "instruct"], required=True,
                        help="pretrain: reconstruction/completion of texts (stage 1); instruct: QA (stage 2)")
    parser.add_argument("--base", default=DEFAULT_BASE_MODEL, help="base causal LM (Hub id or folder)")
    parser.add_argument("--data", required=True, action="append",
                        help="pretrain: 'wikitext' (bundled), a .jsonl/.json/.csv/.parquet/.txt file (optionally "
                             "gzipped) with a text column, a QA file (its distinct contexts are the texts) or a Hub "
                             "dataset id; instruct: a QA JSONL file in the shared format or a bundled name such as "
                             "'squad:train'. Repeat to train on several sources")
    parser.add_argument("--eval-data", default=None, help="held-out data (default: a split of --data)")
    parser.add_argument("--eval-contexts", type=int, default=None,
                        help="instruct: keep only the records of the first N distinct contexts of the held-out data "
                             "(a cheap monitor)")
    parser.add_argument("--eval-fraction", type=float, default=0.1,
                        help="share of --data held out for evaluation when --eval-data is not given (by article "
                             "for QA records; 0: no evaluation)")
    parser.add_argument("--exclude-articles", action="append", default=[], metavar="QA_DATA",
                        help="drop training records (stage 1: contexts of QA data) about any article (title) of "
                             "this QA data, e.g. 'squad' (the bundled evaluation articles); repeatable. Stage 2 "
                             "always drops the articles of --eval-data")
    parser.add_argument("--output", required=True, help="output folder (checkpoints, final model, loss.png)")
    parser.add_argument("--config", default=None, help="JSON or YAML file of training arguments (+ 'model')")
    parser.add_argument("--init-from", default=None, help="stage-1 checkpoint folder to start stage 2 from")
    parser.add_argument("--objective", choices=OBJECTIVES,
                        default=None, help="answer-pass loss: gold cross-entropy (default), distillation from the "
                        "base model with the context in its prompt, or both; '+hidden' adds hidden-state matching, "
                        "'+contrastive' the in-batch contrastive term (see docs/training.md)")
    parser.add_argument("--teacher-answers", action="store_true", default=None,
                        help="instruct: train on the teacher's own greedy answers instead of the gold ones")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="optimizer steps to train (default: the config's, else TrainingArguments')")
    parser.add_argument("--seed", type=int, default=None, help="seed of initialisation, data order and sampling")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="resume from the latest checkpoint in --output, or from the given checkpoint")
    parser.add_argument("--help-training", action=TrainingHelp, nargs=0,
                        help="list every TrainingArguments field accepted as a flag, and exit")
    add_device_options(parser)  # train: cpu or cuda (accelerate gives each process its GPU); --dtype: the base's
    parser.set_defaults(func=run)


class TrainingHelp(argparse.Action):
    """``--help-training``: the help of every `ShineTrainingArguments` field (they are all flags of ``shine train``)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        # the training stack (datasets, accelerate) is the optional [train] extra: loaded only when asked for
        from transformers import HfArgumentParser

        from peft_shine.training.trainer import ShineTrainingArguments  # the [train] extra, as above

        HfArgumentParser(ShineTrainingArguments, prog="shine train").print_help()
        parser.exit()


def check_paths(args: argparse.Namespace) -> None:
    """Fail on a missing local input (a data file, --config) before anything loads."""
    data = [args.data] if isinstance(args.data, str) else list(args.data)
    files = [value for value in [*data, args.eval_data] if value and value.lower().endswith(DATA_SUFFIXES)]
    for value in files:
        if not Path(value).is_file():
            raise MissingFileError(f"no such file {value}; pass an existing data file, a bundled name such as "
                                    f"'wikitext' or 'squad:train', or a Hub dataset id")
    if args.config and not Path(args.config).is_file():
        raise MissingFileError(f"no such --config file {args.config}")


def run(args: argparse.Namespace) -> int:
    """Run ``shine train`` (every process of a multi-process launch runs it)."""
    check_paths(args)
    # the training stack (datasets, accelerate) is the optional [train] extra: loaded only to train
    from peft_shine.storage.save_targets import check_hypernetwork_folder  # with torch: loaded to train only
    from peft_shine.training.plots import plot_losses
    from peft_shine.training.recipe import train

    check_hypernetwork_folder(args.output)  # a foreign folder is refused before any data, model or teacher work
    trainer = train(args)
    if trainer.is_world_process_zero():
        history = trainer.state.log_history
        data = ", ".join([args.data] if isinstance(args.data, str) else args.data)
        plot = plot_losses(history, Path(args.output) / "loss.png", title=f"SHINE {args.stage} on {data}")
        final = next((entry for entry in reversed(history) if "eval_loss" in entry), {})
        summary = ", ".join(f"{key} {value:.4f}" for key, value in final.items() if key.startswith("eval_loss"))
        print(f"Hypernetwork saved to {args.output}/; loss plot {plot}")
        if summary:
            print(f"Held-out (step {final['step']}): {summary}")
    return 0
