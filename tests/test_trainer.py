"""`ShineTrainer` on the tiny model: checkpoints, resume, gradient accumulation, non-finite steps, stage 2 init,
evaluation controls, a tiny fit, the ``shine train`` CLI and two-process (DDP) training."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from peft_shine import ShineModel
from peft_shine.qa_data import load_qa_records
from peft_shine.training.data import RECONSTRUCTION_INSTRUCTION, tokenize_examples
from peft_shine.training.trainer import ShineTrainer, ShineTrainingArguments, build_dataset
from tiny_models import make_char_tokenizer, make_tiny_lm, write_training_folder


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


def tiny_shine(seed: int = 0, **config) -> ShineModel:
    """A SHINE on the tiny llama with an init that can actually be fitted (see test_modeling)."""
    lm = make_tiny_lm("llama", seed=seed, initializer_range=0.2)
    return ShineModel.from_base_model(lm, make_char_tokenizer(), seed=seed, **{"lora_rank": 2, "lora_scale": 0.03,
                                                                                 **config})


def random_words(count: int, seed: int = 0, length: int = 6) -> list[str]:
    rng = random.Random(seed)
    return sorted({"".join(rng.choice("abcd") for _ in range(length)) for _ in range(count)})


def word_dataset(words: list[str]):
    """Reconstruction examples: the context is a word, the answer repeats it."""
    examples = [{"context": w, "messages": [{"role": "user", "content": RECONSTRUCTION_INSTRUCTION},
                                            {"role": "assistant", "content": w}]} for w in words]
    return tokenize_examples(examples, make_char_tokenizer(), 32, 64)


def training_args(tmp_path: Path, **overrides) -> ShineTrainingArguments:
    values = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none", "disable_tqdm": True, "seed": 0,
              "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "learning_rate": 1e-3,
              "weight_decay": 0.0, "logging_steps": 1, "save_strategy": "no", "max_context_length": 32,
              "max_conversation_length": 64}
    return ShineTrainingArguments(**{**values, **overrides})


def hypernetwork_state(shine: ShineModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in shine.named_parameters() if not n.startswith("base_lm.")}


class StepRecorder(TrainerCallback):
    """Snapshots of the hypernetwork after every step and of its gradients before every optimizer step."""

    def __init__(self, shine: ShineModel, stop_at: int | None = None) -> None:
        self.shine, self.stop_at, self.states, self.grads = shine, stop_at, [], []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads.append({n: p.grad.clone() for n, p in self.shine.named_parameters() if p.grad is not None})

    def on_step_end(self, args, state, control, **kwargs):
        self.states.append(hypernetwork_state(self.shine))
        if state.global_step == self.stop_at:
            control.should_training_stop = True


def assert_states_close(first: dict, second: dict, atol: float = 1e-6, rtol: float = 0.0) -> None:
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], atol=atol, rtol=rtol, msg=name)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_holds_only_the_hypernetwork(tmp_path):
    shine = tiny_shine()
    args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    ShineTrainer(shine, args, train_dataset=word_dataset(random_words(8))).train()
    folder = tmp_path / "checkpoint-2"
    saved = load_file(folder / "model.safetensors")
    assert set(saved) == set(hypernetwork_state(shine))
    assert not any(name.startswith("base_lm") for name in saved)
    assert not list(folder.glob("pytorch_model*")) and not list(folder.glob("model-*.safetensors"))
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == sum(p.requires_grad for p in shine.hypernetwork_parameters())
    reloaded = ShineModel.from_pretrained(folder, base_model=shine.base_lm, tokenizer=shine.tokenizer)
    assert_states_close(hypernetwork_state(shine), hypernetwork_state(reloaded), atol=0.0)


def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = word_dataset(random_words(10))
    straight = tiny_shine()
    ShineTrainer(straight, training_args(tmp_path / "a", max_steps=6), train_dataset=data).train()

    interrupted = tiny_shine()
    args = training_args(tmp_path / "b", max_steps=6, save_strategy="steps", save_steps=3)
    ShineTrainer(interrupted, args, train_dataset=data, callbacks=[StepRecorder(interrupted, stop_at=3)]).train()
    resumed = tiny_shine()
    ShineTrainer(resumed, args, train_dataset=data).train(resume_from_checkpoint=str(tmp_path / "b/checkpoint-3"))
    assert not torch.equal(straight.m2p.slot_embedding, tiny_shine().m2p.slot_embedding)  # it did train
    assert_states_close(hypernetwork_state(straight), hypernetwork_state(resumed), atol=1e-6)


# ---------------------------------------------------------------------------------------------- loss scaling


def first_step(tmp_path: Path, data, **overrides) -> StepRecorder:
    shine = tiny_shine()
    recorder = StepRecorder(shine)
    args = training_args(tmp_path, max_steps=1, optim="sgd", learning_rate=0.5, max_grad_norm=0.0, **overrides)
    ShineTrainer(shine, args, train_dataset=data, callbacks=[recorder]).train()
    return recorder


def test_gradient_accumulation_matches_one_large_batch(tmp_path):
    data = word_dataset(["ab", "abcdabcdab", "abc", "abcdabcdabcdabcdab"])  # unequal label counts per micro-batch
    large = first_step(tmp_path / "a", data, per_device_train_batch_size=4)
    accumulated = first_step(tmp_path / "b", data, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert_states_close(large.grads[0], accumulated.grads[0], atol=1e-7, rtol=1e-4)
    assert_states_close(large.states[0], accumulated.states[0], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_in_the_trainer_gives_the_same_step(tmp_path):
    data = word_dataset(random_words(2))
    plain = first_step(tmp_path / "a", data)
    checkpointed = first_step(tmp_path / "b", data, gradient_checkpointing=True)
    assert_states_close(plain.grads[0], checkpointed.grads[0], atol=1e-7, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- non-finite steps


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "adamw_torch"])  # skipped on the device / by the host
@pytest.mark.parametrize("accumulation, bad_call, value", [(1, 2, float("nan")), (2, 3, float("inf"))])
def test_nonfinite_loss_skips_the_whole_step(tmp_path, accumulation, bad_call, value, optim):
    shine = tiny_shine()
    forward, calls = shine.forward, []

    def poisoned_forward(*args, **kwargs):
        calls.append(1)
        output = forward(*args, **kwargs)
        if len(calls) == bad_call:
            output.loss = output.loss * value
        return output

    shine.forward = poisoned_forward
    recorder = StepRecorder(shine)
    args = training_args(tmp_path, max_steps=3, gradient_accumulation_steps=accumulation, optim=optim)
    trainer = ShineTrainer(shine, args, train_dataset=word_dataset(random_words(12)), callbacks=[recorder])
    trainer.train()
    before, skipped, after = recorder.states
    assert_states_close(before, skipped, atol=0.0)  # step 2 changed nothing
    assert any(not torch.equal(skipped[n], after[n]) for n in after)  # step 3 trained again
    assert (trainer.nonfinite_losses, trainer.skipped_steps) == (1, 1)
    assert all(torch.isfinite(p).all() for p in shine.hypernetwork_parameters())
    assert {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()} == {2}  # Adam moments too
    assert [entry["skipped_steps"] for entry in trainer.state.log_history if "loss" in entry] == [0, 1, 1]


# ---------------------------------------------------------------------------------------------- stage 2


def test_stage_two_starts_from_a_stage_one_checkpoint(tmp_path):
    stage1 = tiny_shine()
    args = training_args(tmp_path / "stage1", max_steps=2)
    ShineTrainer(stage1, args, train_dataset=word_dataset(random_words(8))).train()
    stage1.save_pretrained(tmp_path / "stage1-final")

    stage2 = tiny_shine(seed=0)
    stage2.m2p.slot_embedding.data.normal_()  # differs from the checkpoint before init_from
    args = training_args(tmp_path / "stage2", stage="instruct", init_from=str(tmp_path / "stage1-final"))
    ShineTrainer(stage2, args, train_dataset=word_dataset(random_words(4)))
    assert_states_close(hypernetwork_state(stage1), hypernetwork_state(stage2), atol=0.0)

    with pytest.raises(ValueError, match="meta_lora_rank"):
        ShineTrainer(tiny_shine(meta_lora_rank=4), args)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ShineTrainer(tiny_shine(), training_args(tmp_path, init_from=str(tmp_path / "nowhere")))


def test_build_dataset_for_both_stages(tmp_path):
    tokenizer = make_char_tokenizer()
    texts = [{"text": " ".join(random_words(6, seed=i, length=3))} for i in range(12)]
    pretrain = build_dataset(training_args(tmp_path, max_context_length=200, max_conversation_length=400), tokenizer,
                             texts)
    records = load_qa_records("squad", split="train")[:12]
    instruct = build_dataset(training_args(tmp_path, stage="instruct", max_context_length=2000,
                                           max_conversation_length=400, qa_mode="multi"), tokenizer, records)
    assert len(pretrain) < len(texts) and len(instruct) == len({r.context for r in records})
    with pytest.raises(ValueError, match="stage must be one of"):
        training_args(tmp_path, stage="finetune")


# ---------------------------------------------------------------------------------------------- evaluation


def test_evaluation_reports_the_adapter_and_both_controls(tmp_path):
    shine = tiny_shine().eval()
    words = ["abcab", "dcba", "bbbcccd"]
    data = word_dataset(words)
    metrics = ShineTrainer(shine, training_args(tmp_path), eval_dataset=data).evaluate()
    batch = [shine.tokenize_contexts([w]) for w in words]
    rows = [torch.tensor([data[i]["input_ids"]]) for i in range(3)]
    labels = [torch.tensor([data[i]["labels"]]) for i in range(3)]

    def loss_sum(context: int, row: int) -> tuple[float, int]:
        out = shine(context_input_ids=batch[context][0], input_ids=rows[row], labels=labels[row], num_items_in_batch=1)
        return out.loss.item(), out.num_label_tokens.item()

    with torch.no_grad():
        adapter = [loss_sum(i, i) for i in range(3)]
        wrong = [loss_sum(1, 0), loss_sum(0, 1)]  # eval batches [0, 1] (rolled) and [2] (alone: no control)
        with shine.apply_lora(None) as base:
            plain = [(base(input_ids=rows[i], labels=labels[i], num_items_in_batch=1).loss.item(), adapter[i][1])
                     for i in range(3)]
    for key, pairs in (("eval_loss", adapter), ("eval_loss_wrong_context", wrong), ("eval_loss_no_adapter", plain)):
        assert metrics[key] == pytest.approx(sum(s for s, _ in pairs) / sum(n for _, n in pairs), rel=1e-5), key


def test_tiny_fit_adapter_beats_both_controls(tmp_path):
    words = random_words(200)
    random.Random(0).shuffle(words)
    shine = tiny_shine()
    args = training_args(tmp_path, max_steps=200, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                         learning_rate=3e-3, warmup_steps=10)
    trainer = ShineTrainer(shine, args, train_dataset=word_dataset(words[16:]), eval_dataset=word_dataset(words[:16]))
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print(f"\ntiny fit: before {before}\n          after {after}")
    assert before["eval_loss"] == pytest.approx(before["eval_loss_wrong_context"], abs=0.1)
    assert after["eval_loss"] < 0.5 * after["eval_loss_wrong_context"]
    assert after["eval_loss"] < 0.25 * after["eval_loss_no_adapter"]


# ---------------------------------------------------------------------------------------------- CLI and DDP


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A saved tiny base model folder, a small training config, a text file and a QA file (two articles)."""
    config = {"max_context_length": 48, "max_conversation_length": 192, "per_device_train_batch_size": 2,
              "gradient_accumulation_steps": 2, "logging_steps": 1, "eval_steps": 2, "use_cpu": True,
              "disable_tqdm": True, "model": {"lora_rank": 2, "lora_scale": 0.03}}
    texts = [" ".join(random_words(8, seed=i, length=4)) for i in range(24)]
    folder = write_training_folder(tmp_path_factory.mktemp("tiny-run"), config, texts)
    records = load_qa_records("squad", split="train")
    titles = sorted({r.title for r in records})
    sample = [r for title in titles for r in [r for r in records if r.title == title][:6]]
    (folder / "qa.jsonl").write_text("\n".join(json.dumps(r.to_dict()) for r in sample))
    return folder


def test_cli_trains_both_stages_and_writes_model_and_plot(tiny_run, tmp_path):
    from peft_shine.cli import main

    common = ["--base", str(tiny_run / "base"), "--config", str(tiny_run / "config.json"), "--max-steps", "2"]
    assert main(["train", "--stage", "pretrain", "--data", str(tiny_run / "texts.jsonl"), "--eval-fraction", "0.2",
                 "--output", str(tmp_path / "s1"), *common]) == 0
    stage2 = {**json.loads((tiny_run / "config.json").read_text()), "max_context_length": 64}
    (tmp_path / "stage2.json").write_text(json.dumps(stage2))
    assert main(["train", "--stage", "instruct", "--data", str(tiny_run / "qa.jsonl"), "--init-from", str(tmp_path / "s1"),
                 "--output", str(tmp_path / "s2"), *common, "--config", str(tmp_path / "stage2.json")]) == 0
    lengths = [json.loads((tmp_path / s / "config.json").read_text())["max_context_length"] for s in ("s1", "s2")]
    assert lengths == [48, 64]  # stage 2 keeps the stage-1 shapes but its own context budget
    for stage in ("s1", "s2"):
        assert (tmp_path / stage / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not any(k.startswith("base_lm") for k in load_file(tmp_path / stage / "model.safetensors"))
        history = json.loads((tmp_path / stage / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
        assert {"eval_loss", "eval_loss_no_adapter", "eval_loss_wrong_context"} <= set(history[-1])


def test_cli_holds_back_evaluation_articles_and_trims_the_monitor(tiny_run):
    from peft_shine.cli import build_parser
    from peft_shine.training.recipe import train_and_eval_data, training_arguments

    records = load_qa_records(str(tiny_run / "qa.jsonl"))
    args = build_parser().parse_args(["train", "--stage", "instruct", "--data", str(tiny_run / "qa.jsonl"),
                                      "--output", "unused", "--eval-data", str(tiny_run / "qa.jsonl"),
                                      "--eval-contexts", "1"])
    train, held_out = train_and_eval_data(args, training_arguments(args, {}))
    assert {r.context for r in held_out} == {records[0].context}  # the monitor: the first context only
    assert train and all(r.title != records[0].title for r in train)  # its whole article is held back
    assert {r.title for r in train} == {r.title for r in records} - {records[0].title}
    args.eval_data, args.exclude_articles = None, [str(tiny_run / "qa.jsonl")]
    with pytest.raises(ValueError, match="--exclude-articles"):
        train_and_eval_data(args, training_arguments(args, {}))


def test_stage_one_reads_qa_contexts_and_texts_together_minus_held_back_articles(tiny_run, tmp_path):
    import gzip

    from peft_shine.cli import build_parser
    from peft_shine.training.recipe import train_and_eval_data, training_arguments

    records = load_qa_records(str(tiny_run / "qa.jsonl"))
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps(records[0].to_dict()))
    packed = tmp_path / "qa.jsonl.gz"
    packed.write_bytes(gzip.compress((tiny_run / "qa.jsonl").read_bytes()))
    args = build_parser().parse_args(["train", "--stage", "pretrain", "--data", str(packed), "--data",
                                      str(tiny_run / "texts.jsonl"), "--exclude-articles", str(held),
                                      "--eval-fraction", "0", "--output", "unused"])
    texts, _ = train_and_eval_data(args, training_arguments(args, {}))
    kept_contexts = list(dict.fromkeys(r.context for r in records if r.title != records[0].title))
    words = [json.loads(line)["text"] for line in (tiny_run / "texts.jsonl").read_text().splitlines()]
    assert texts == kept_contexts + words  # distinct contexts once each, the held-back article's none


def test_cli_config_file_is_merged_under_the_flags(tmp_path):
    from peft_shine.cli import build_parser
    from peft_shine.io_utils import read_mapping as read_config
    from peft_shine.training.recipe import training_arguments

    (tmp_path / "run.yaml").write_text("learning_rate: 5e-5\nmax_steps: 7\nqa_mode: multi\nmodel:\n  lora_rank: 2\n")
    args = build_parser().parse_args(["train", "--stage", "instruct", "--data", "x", "--output", str(tmp_path),
                                      "--config", str(tmp_path / "run.yaml"), "--max-steps", "3"])
    config = read_config(args.config)
    assert config["model"] == {"lora_rank": 2}
    parsed = training_arguments(args, {k: v for k, v in config.items() if k != "model"})
    assert (parsed.stage, parsed.max_steps, parsed.learning_rate, parsed.qa_mode) == ("instruct", 3, 5e-5, "multi")
    assert (parsed.gradient_accumulation_steps, parsed.remove_unused_columns) == (4, False)  # CLI defaults
    with pytest.raises(ValueError, match="not used by the HfArgumentParser: \\['lora_rank'\\]"):
        training_arguments(args, config["model"])  # a misplaced model field is refused, not ignored


DDP_WORKER = textwrap.dedent("""
    import argparse
    import sys
    import torch
    from peft_shine.cli import train as command
    from peft_shine.training.recipe import train

    out, base, config = sys.argv[1:4]
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers())
    for stage, data, extra in (("pretrain", "wikitext", []),
                               ("instruct", "squad:train", ["--init-from", f"{out}/pretrain"])):
        args = parser.parse_args(["train", "--stage", stage, "--base", base, "--data", data, "--output",
                                          f"{out}/{stage}", "--config", config, "--max-steps", "3", *extra])
        trainer = train(args)
        state = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not n.startswith("base_lm.")}
        state["first_batch"] = next(iter(trainer.get_train_dataloader()))["input_ids"]
        torch.save(state, f"{out}/{stage}-rank{trainer.args.process_index}.pt")
""")


@pytest.mark.integration
def test_two_processes_train_both_stages_to_identical_weights(tiny_run, tmp_path):
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # `--cpu` alone starts a single process in accelerate 1.x unless MPI is configured; `--multi_gpu` spawns the
    # processes with torch.distributed.run, and the training arguments (use_cpu) keep them on the CPU (gloo).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), str(tmp_path / "worker.py"), str(tmp_path), str(tiny_run / "base"),
               str(tiny_run / "config.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    for stage in ("pretrain", "instruct"):
        ranks = [torch.load(tmp_path / f"{stage}-rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert not torch.equal(ranks[0].pop("first_batch"), ranks[1].pop("first_batch"))  # different data shards
        assert len(ranks[0]) > 10
        for name, tensor in ranks[0].items():
            assert torch.equal(tensor, ranks[1][name]), name  # bit-identical on both ranks


def test_every_training_arguments_field_is_a_flag_of_shine_train(tmp_path):
    from peft_shine.cli import build_parser
    from peft_shine.training.recipe import training_arguments

    (tmp_path / "run.yaml").write_text("warmup_steps: 7\nlogging_steps: 5\n")
    argv = ["train", "--stage", "pretrain", "--data", "x", "--output", str(tmp_path), "--config",
            str(tmp_path / "run.yaml"), "--logging_steps", "2", "--lr_scheduler_type", "cosine", "--max-steps", "4"]
    args, unknown = build_parser().parse_known_args(argv)
    args.training_flags = unknown
    parsed = training_arguments(args, {"warmup_steps": 7, "logging_steps": 5})
    assert (parsed.logging_steps, parsed.lr_scheduler_type, parsed.warmup_steps, parsed.max_steps) == (
        2, "cosine", 7, 4)  # the flag wins over the file, the file over the defaults, SHINE flags still apply
    args.training_flags = ["--no_such_field", "1"]
    with pytest.raises(ValueError, match="Unknown training flag"):
        training_arguments(args, {})
