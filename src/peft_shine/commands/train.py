"""``shine train``: train a SHINE hypernetwork — stage 1 (``pretrain``) or stage 2 (``instruct``).

Examples::

    shine train --stage pretrain --data wikitext --output runs/stage1 --max-steps 500
    shine train --stage instruct --data squad:train --init-from runs/stage1 --output runs/stage2
    accelerate launch --multi_gpu --num_processes 2 -m peft_shine.cli train --stage pretrain ... (2 CPU processes;
    with --cpu alone accelerate 1.15 starts a single process)

``--config`` takes a JSON or YAML file of `ShineTrainingArguments` fields (any `TrainingArguments` field too) and an
optional ``model`` mapping of `ShineConfig` fields for a new hypernetwork (e.g. ``lora_rank``). Flags given on the
command line win over the file. The output folder receives the final hypernetwork, Trainer checkpoints and
``loss.png`` (training loss and the held-out losses with the adapter, a wrong-context adapter and no adapter).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..base_models import DEFAULT_BASE_MODEL


BUNDLED_TEXTS = {"wikitext": "wikitext_sample.jsonl"}
TEXT_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
QA_COLUMNS = {"context", "question", "answers"}
# CLI defaults under the config file (micro-batch 1, accumulation 4, warm-up, clip 1.0; see docs/training.md)
DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 1, "per_device_eval_batch_size": 4, "gradient_accumulation_steps": 4,
    "weight_decay": 0.01, "max_grad_norm": 1.0, "warmup_steps": 0.05, "logging_steps": 10, "eval_strategy": "steps",
    "eval_steps": 100, "save_steps": 200, "save_total_limit": 2, "report_to": "none",
}
LEARNING_RATES = {"pretrain": 5e-5, "instruct": 3e-5}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a SHINE hypernetwork (stage 1 pretrain, stage 2 instruct)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["pretrain", "instruct"], required=True)
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
    parser.add_argument("--objective", choices=["ce", "kd", "kd+ce", "kd+hidden", "kd+ce+hidden"],
                        default=None, help="answer-pass loss: gold cross-entropy (default), distillation from the "
                        "base model with the context in its prompt, or both; '+hidden' adds hidden-state matching "
                        "(see docs/training.md)")
    parser.add_argument("--teacher-answers", action="store_true", default=None,
                        help="instruct: train on the teacher's own greedy answers instead of the gold ones")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="resume from the latest checkpoint in --output, or from the given checkpoint")
    parser.set_defaults(func=run)


def read_config(path: str | None) -> dict[str, Any]:
    """The JSON or YAML mapping in ``path`` (empty without a path)."""
    if path is None:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of training arguments.")
    return data


def training_arguments(args: argparse.Namespace, config: dict[str, Any]):
    """`ShineTrainingArguments` from the defaults, the config file and the command line, in rising priority."""
    from transformers import HfArgumentParser

    from ..trainer import ShineTrainingArguments

    values = {**DEFAULTS, "learning_rate": LEARNING_RATES[args.stage], **config, "stage": args.stage,
              "output_dir": args.output}
    flags = {"init_from": args.init_from, "max_steps": args.max_steps, "seed": args.seed,
             "objective": getattr(args, "objective", None), "teacher_answers": getattr(args, "teacher_answers", None)}
    values.update({key: value for key, value in flags.items() if value is not None})
    # YAML reads "5e-5" (no dot) as a string: convert strings given for float-valued fields
    floats = {f.name for f in dataclasses.fields(ShineTrainingArguments) if isinstance(f.default, float)}
    values = {k: float(v) if k in floats and isinstance(v, str) else v for k, v in values.items()}
    (parsed,) = HfArgumentParser(ShineTrainingArguments).parse_dict(values)
    return parsed


def load_texts(source: str, column: str, held_back: Sequence = ()) -> list[str]:
    """Texts of a bundled text sample, a local file (``datasets`` builders by extension, ``.gz`` allowed) or a Hub
    dataset. A QA dataset gives its distinct contexts, minus those of any article of the ``held_back`` records."""
    import datasets

    from ..data import texts_from_column
    from ..evaluation.qa_data import bundled_path

    path = bundled_path(BUNDLED_TEXTS[source]) if source in BUNDLED_TEXTS else Path(source)
    if path.is_file():
        suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
        builder = TEXT_FORMATS.get(suffix)
        if builder is None:
            raise ValueError(f"Unknown text file type {suffix!r}; use one of {sorted(TEXT_FORMATS)}.")
        if builder in ("json", "text") and path.suffix != ".gz":
            from ..data_files import check_text_data_file

            check_text_data_file(path)  # one clear line for empty, binary or malformed files
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    else:
        dataset = datasets.load_dataset(source, split="train")
    if QA_COLUMNS.issubset(dataset.column_names):
        from ..evaluation.qa_data import QARecord

        records = without_articles([QARecord.from_dict(row, index=i) for i, row in enumerate(dataset)], held_back)
        return list(dict.fromkeys(record.context for record in records))
    return texts_from_column(dataset, column)


def load_records(source: str) -> list:
    """QA records of a JSONL file or a bundled name, optionally ``name:split`` (e.g. ``squad:train``)."""
    from ..evaluation.qa_data import load_qa_records

    if Path(source).is_file() or ":" not in source:
        return load_qa_records(source)
    name, split = source.rsplit(":", 1)
    return load_qa_records(name, split=split)


def without_articles(records: list, held_back: list) -> list:
    """``records`` minus those sharing an article title with ``held_back`` (logged when any are dropped)."""
    titles = {title for record in held_back for title in record.articles}
    kept = [record for record in records if not titles.intersection(record.articles)]
    if len(kept) < len(records):
        print(f"Held back {len(records) - len(kept)} training records about {len(titles)} evaluation article(s)")
    if not kept:
        raise ValueError("Every training record is about a held-back article; check --data and --exclude-articles.")
    return kept


def train_and_eval_data(args: argparse.Namespace, training) -> tuple[list, list]:
    """Raw training and held-out data for the stage: ``--eval-data``, else a seeded split of ``--data``."""
    from ..evaluation.qa_data import held_out_split

    held_back = [record for source in args.exclude_articles for record in load_records(source)]
    if training.stage == "instruct":
        load = load_records
    else:
        def load(source: str) -> list[str]:
            return load_texts(source, training.text_column, held_back)
    sources = [args.data] if isinstance(args.data, str) else args.data
    data = [item for source in sources for item in load(source)]
    eval_data = None if args.eval_data is None else load(args.eval_data)
    if training.stage == "instruct":
        if eval_data is not None and args.eval_contexts:
            first = set(list(dict.fromkeys(record.context for record in eval_data))[:args.eval_contexts])
            eval_data = [record for record in eval_data if record.context in first]
        data = without_articles(data, held_back + (eval_data or []))
    if eval_data is not None:
        return data, eval_data
    if args.eval_fraction <= 0:
        return data, []
    if training.stage == "instruct":
        return held_out_split(data, eval_fraction=args.eval_fraction, seed=training.seed)
    shuffled = random.Random(training.seed).sample(data, len(data))
    cut = max(1, round(len(data) * args.eval_fraction))
    return shuffled[cut:], shuffled[:cut]


def build_model(base: str, training, model_config: dict[str, Any]):
    """A fresh hypernetwork for ``base`` (or one shaped like the ``init_from`` checkpoint, whose weights the
    trainer then loads)."""
    from ..base_models import load_base_model
    from ..configuration_shine import ShineConfig
    from ..modeling_shine import ShineModel

    base_lm, tokenizer = load_base_model(base)
    lengths = {"max_context_length": training.max_context_length,
               "max_conversation_length": training.max_conversation_length}
    if training.init_from:  # same shapes as the checkpoint; the lengths of this stage (they shape no weight)
        config = ShineConfig.from_pretrained(training.init_from, **lengths)
        return ShineModel(config).attach_base_model(base_lm, tokenizer)
    return ShineModel.from_base_model(base_lm, tokenizer, seed=training.seed, **{**lengths, **model_config})


def train(args: argparse.Namespace):
    """Run ``shine train`` and return the finished `ShineTrainer` (final model saved in ``--output``)."""
    from transformers.trainer_utils import IntervalStrategy

    from ..trainer import ShineTrainer, build_dataset, last_complete_checkpoint

    config = read_config(args.config)
    training = training_arguments(args, {k: v for k, v in config.items() if k != "model"})
    shine = build_model(args.base, training, config.get("model", {}))
    train_data, eval_data = train_and_eval_data(args, training)
    with training.main_process_first(desc="building the datasets"):  # rank 0 fills the teacher caches first
        train_set = build_dataset(training, shine.tokenizer, train_data, teacher=shine)
        eval_set = (build_dataset(training, shine.tokenizer, eval_data, teacher=shine, distill=True,
                                  held_out=True)
                    if eval_data else None)  # the monitor always reports the KL to the in-context teacher
    if eval_set is None:
        training.eval_strategy = IntervalStrategy.NO
    trainer = ShineTrainer(shine, training, train_dataset=train_set, eval_dataset=eval_set)
    resume = str(last_complete_checkpoint(args.output)) if args.resume == "latest" else args.resume
    trainer.train(resume_from_checkpoint=resume)
    evaluated = {entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry}
    if eval_set is not None and trainer.state.global_step not in evaluated:
        trainer.evaluate()  # the plot and summary end on the final weights
    trainer.save_model(args.output)
    trainer.accelerator.wait_for_everyone()
    return trainer


def run(args: argparse.Namespace) -> int:
    from ..plots import plot_losses

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
