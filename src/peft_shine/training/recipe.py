"""The ``shine train`` job without its command line: training arguments from defaults, a config file and flags; the
raw data of each stage (bundled names, local files, Hub datasets; held-out articles dropped); the hypernetwork to
train; and the run itself, resumable. `peft_shine.cli.train` parses the flags and calls `train`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from transformers import HfArgumentParser
from transformers.trainer_utils import IntervalStrategy

from peft_shine.errors import ConfigError, DataError, MissingFileError
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.loading import FP32, Placement, resolve_placement
from peft_shine.modeling_shine import ShineModel
from peft_shine.qa_data import QARecord, bundled_path, held_out_split, load_qa_source
from peft_shine.storage.base_models import load_base_model
from peft_shine.storage.io_utils import read_mapping
from peft_shine.training.data import texts_from_column
from peft_shine.training.data_files import check_text_data_file
from peft_shine.training.resume import evaluated_at_save, last_complete_checkpoint
from peft_shine.training.trainer import ShineTrainer, ShineTrainingArguments, build_dataset


BUNDLED_TEXTS = {"wikitext": "wikitext_sample.jsonl"}
TEXT_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
QA_COLUMNS = {"context", "question", "answers"}
# defaults under the config file (micro-batch 1, accumulation 4, warm-up, clip 1.0; see docs/training.md)
DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 1, "per_device_eval_batch_size": 4, "gradient_accumulation_steps": 4,
    "weight_decay": 0.01, "max_grad_norm": 1.0, "warmup_steps": 0.05, "logging_steps": 10, "eval_strategy": "steps",
    "eval_steps": 100, "save_steps": 200, "save_total_limit": 2, "report_to": "none",
}
LEARNING_RATES = {"pretrain": 5e-5, "instruct": 3e-5}


def training_arguments(args: argparse.Namespace, config: dict[str, Any], placement: Placement | None = None):
    """`ShineTrainingArguments` from the defaults, the config file and the command line, in rising priority.
    A CPU ``placement`` sets ``use_cpu``."""
    values = {**DEFAULTS, "learning_rate": LEARNING_RATES[args.stage], **config, "stage": args.stage,
              "output_dir": args.output}
    if placement is not None and placement.device == "cpu":
        values["use_cpu"] = True
    flags = {"init_from": args.init_from, "max_steps": args.max_steps, "seed": args.seed,
             "objective": getattr(args, "objective", None), "teacher_answers": getattr(args, "teacher_answers", None)}
    values.update({key: value for key, value in flags.items() if value is not None})
    # YAML reads "5e-5" (no dot) as a string: convert strings given for float-valued fields
    floats = {f.name for f in dataclasses.fields(ShineTrainingArguments) if isinstance(f.default, float)}
    values = {k: float(v) if k in floats and isinstance(v, str) else v for k, v in values.items()}
    (parsed,) = HfArgumentParser(ShineTrainingArguments).parse_dict(values)  # unknown fields are refused here
    extra = list(getattr(args, "training_flags", None) or [])
    if not extra:
        return parsed
    parser = HfArgumentParser(ShineTrainingArguments)
    parser.set_defaults(**values)  # the defaults and the config file, under the flags
    parsed, remaining = parser.parse_args_into_dataclasses(args=extra, return_remaining_strings=True)
    if remaining:
        raise ConfigError(f"Unknown training flag(s) {remaining}: see `shine train --help` and `shine train "
                          f"--help-training` for every TrainingArguments field.")
    return parsed


def load_texts(source: str, column: str, held_back: Sequence = ()) -> list[str]:
    """Texts of a bundled text sample, a local file (``datasets`` builders by extension, ``.gz`` allowed) or a Hub
    dataset. A QA dataset gives its distinct contexts, minus those of any article of the ``held_back`` records."""

    path = bundled_path(BUNDLED_TEXTS[source]) if source in BUNDLED_TEXTS else Path(source)
    if path.is_file():
        suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
        builder = TEXT_FORMATS.get(suffix)
        if builder is None:
            raise ConfigError(f"Unknown text file type {suffix!r}; use one of {sorted(TEXT_FORMATS)}.")
        if builder in ("json", "text") and path.suffix != ".gz":
            check_text_data_file(path)  # one clear line for empty, binary or malformed files
        dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    else:
        check_dataset_source(source)
        dataset = datasets.load_dataset(source, split="train")
    if QA_COLUMNS.issubset(dataset.column_names):

        records = without_articles([QARecord.from_dict(row, index=i) for i, row in enumerate(dataset)], held_back)
        return list(dict.fromkeys(record.context for record in records))
    return texts_from_column(dataset, column)


def check_dataset_source(source: str) -> None:
    """A ``--data`` that is not a file must be a Hub dataset id: a folder, or a missing path (a file suffix, a
    path separator) is named as such instead of being looked up on the Hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        raise ConfigError(f"{source} is a folder; pass a data file ({', '.join(sorted(TEXT_FORMATS))}), a "
                          f"bundled name or a Hub dataset id.")
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source
    suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if looks_like_path or suffix in TEXT_FORMATS:
        raise MissingFileError(f"no such file {source}; pass an existing data file, a bundled name "
                               f"({', '.join(sorted(BUNDLED_TEXTS))}) or a Hub dataset id.")


def without_articles(records: list, held_back: list) -> list:
    """``records`` minus those sharing an article title with ``held_back`` (logged when any are dropped)."""
    titles = {title for record in held_back for title in record.articles}
    kept = [record for record in records if not titles.intersection(record.articles)]
    if len(kept) < len(records):
        print(f"Held back {len(records) - len(kept)} training records about {len(titles)} evaluation article(s)")
    if not kept:
        raise DataError("Every training record is about a held-back article; check --data and --exclude-articles.")
    return kept


def train_and_eval_data(args: argparse.Namespace, training) -> tuple[list, list]:
    """Raw training and held-out data for the stage: ``--eval-data``, else a seeded split of ``--data``."""

    held_back = [record for source in args.exclude_articles for record in load_qa_source(source)]
    if training.stage == "instruct":
        load = load_qa_source
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


def training_placement(args: argparse.Namespace, config: dict[str, Any]) -> Placement:
    """Where the base LM trains: ``--device`` cpu or cuda (each process of ``accelerate launch`` gets its own GPU,
    so ``cuda:N`` and ``auto-map`` are refused), ``--dtype`` (``auto``: the config's ``base_dtype`` if it has one,
    else bf16 where the device multiplies bf16 fast or when the config sets ``bf16: true``)."""
    dtype = getattr(args, "dtype", "auto")
    placement = resolve_placement(getattr(args, "device", "auto"), config.get("base_dtype", "auto") if dtype == "auto"
                                  else dtype, prefer_bf16=str(config.get("bf16", "")).lower() == "true",
                                  workload="training")
    if placement.device not in ("cpu", "cuda"):
        raise ConfigError(f"shine train --device {placement.device}: use cpu or cuda (accelerate launch places one "
                          f"process per GPU).")
    return placement


def build_model(base: str, training, model_config: dict[str, Any], placement: Placement | None = None):
    """A fresh hypernetwork for ``base`` (or one shaped like the ``init_from`` checkpoint, whose weights the
    trainer then loads). The base is loaded in ``placement.dtype`` (frozen; the Trainer moves it to its device);
    the hypernetwork's master weights stay fp32."""
    base_lm, tokenizer = load_base_model(base, dtype=(placement or Placement("cpu", FP32)).dtype)
    lengths = {"max_context_length": training.max_context_length,
               "max_conversation_length": training.max_conversation_length}
    if training.init_from:  # the checkpoint's shapes, this stage's lengths; `model:` may add a bias LoRA or a gate
        config = ShineConfig.from_pretrained(training.init_from, **{**lengths, **model_config})
        return ShineModel(config).attach_base_model(base_lm, tokenizer)
    return ShineModel.from_base_model(base_lm, tokenizer, seed=training.seed, **{**lengths, **model_config})


def train(args: argparse.Namespace):
    """Run ``shine train`` and return the finished `ShineTrainer` (final model saved in ``--output``)."""
    config = read_mapping(args.config)
    placement = training_placement(args, config)
    training = training_arguments(args, {k: v for k, v in config.items() if k not in ("model", "base_dtype")},
                                  placement)
    shine = build_model(args.base, training, config.get("model", {}), placement)
    train_data, eval_data = train_and_eval_data(args, training)
    with training.main_process_first(desc="building the datasets"):  # rank 0 fills the teacher caches first
        train_set = build_dataset(training, shine.tokenizer, train_data, teacher=shine)
        eval_set = (build_dataset(training, shine.tokenizer, eval_data, teacher=shine, distill=True,
                                  held_out=True)
                    if eval_data else None)  # the monitor always reports the KL to the in-context teacher
    if eval_set is None:
        training.eval_strategy = IntervalStrategy.NO
    resume = str(last_complete_checkpoint(args.output)) if args.resume == "latest" else args.resume
    if resume and training.eval_on_start and evaluated_at_save(resume):
        training.eval_on_start = False  # the monitor of the checkpoint's step is already in the run's history
    trainer = ShineTrainer(shine, training, train_dataset=train_set, eval_dataset=eval_set)
    trainer.train(resume_from_checkpoint=resume)
    evaluated = {entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry}
    if eval_set is not None and trainer.state.global_step not in evaluated:
        trainer.evaluate()  # the plot and summary end on the final weights
    trainer.save_model(args.output)
    trainer.accelerator.wait_for_everyone()
    return trainer
