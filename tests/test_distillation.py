"""Distillation from the in-context teacher: the top-k KL, teacher/student inputs, cached targets, a tiny KD fit."""

from __future__ import annotations

import random

import pytest
import torch

from peft_shine.hypernetwork.layout import find_decoder_layers
from peft_shine.hypernetwork.lora_binding import capture_layer_outputs
from peft_shine.hypernetwork.losses import hidden_l1, per_context_mean, topk_kl
from peft_shine.qa_data import QARecord
from peft_shine.training.data import RECONSTRUCTION_INSTRUCTION, tokenize_examples
from peft_shine.training.distillation import (
    add_teacher_targets,
    answer_hidden,
    encode_teacher,
    hidden_layer_indices,
    teacher_topk,
    with_teacher_answers,
)
from peft_shine.training.trainer import ShineTrainer, build_dataset
from test_trainer import StepRecorder, assert_states_close, random_words, tiny_run, tiny_shine, training_args  # noqa: F401
from tiny_models import make_char_tokenizer


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


def word_examples(words: list[str]) -> list[dict]:
    return [{"context": f"The word is {w}.", "messages": [{"role": "user", "content": RECONSTRUCTION_INSTRUCTION},
                                                          {"role": "assistant", "content": w}]} for w in words]


def kd_dataset(shine, words: list[str], cache_dir=None, top_k: int = 8):
    raw = tokenize_examples(word_examples(words), shine.tokenizer, 32, 64, keep_raw=True)
    return add_teacher_targets(raw, shine.base_lm, shine.tokenizer, top_k=top_k, cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------- the loss


def test_topk_kl_is_zero_for_the_teacher_itself_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(7, 50) * 3
    values, ids = torch.log_softmax(logits, -1).topk(5, dim=-1)
    assert topk_kl(logits, ids, values).abs().max() < 1e-5
    other = topk_kl(logits + torch.randn(7, 50), ids, values)
    assert (other > 1e-4).all()
    # the tail bucket counts: moving mass between two tokens outside the top-k changes nothing
    outside = torch.ones(7, 50, dtype=torch.bool).scatter(1, ids, False).nonzero()[:, 1].view(7, -1)[:, :2]
    shuffled = logits.clone().scatter(1, outside, logits.gather(1, outside.flip(1)))
    assert topk_kl(shuffled, ids, values).abs().max() < 1e-5


def test_per_context_mean_weights_every_context_equally():
    values = torch.tensor([1.0, 1.0, 1.0, 4.0])
    rows = torch.tensor([0, 0, 0, 1])
    assert per_context_mean(values, rows, 3).tolist() == [1.0, 4.0, 0.0]


# ---------------------------------------------------------------------------------------------- inputs and targets


def test_student_never_sees_the_context_and_the_teacher_always_does():
    tokenizer = make_char_tokenizer()
    words = random_words(6, length=8)
    raw = tokenize_examples(word_examples(words), tokenizer, 32, 64, keep_raw=True)
    for example in raw:
        context = example["context_input_ids"]
        teacher = encode_teacher(example, tokenizer)

        def contains(ids: list[int], part: list[int]) -> bool:
            return any(ids[i: i + len(part)] == part for i in range(len(ids) - len(part) + 1))

        assert not contains(example["input_ids"], context)
        assert contains(teacher["teacher_input_ids"], context)
        student_answer = [t for t in example["labels"] if t != -100]
        assert [t for t in teacher["teacher_labels"] if t != -100] == student_answer


def test_teacher_targets_round_trip_through_the_cache(tmp_path):
    shine = tiny_shine()
    words = random_words(5)
    first = kd_dataset(shine, words, cache_dir=tmp_path)
    cached = list(tmp_path.glob("teacher-*.arrow"))
    assert len(cached) == 1
    again = kd_dataset(shine, words, cache_dir=tmp_path)
    assert list(tmp_path.glob("teacher-*.arrow")) == cached
    assert again["teacher_topk_ids"] == first["teacher_topk_ids"]
    assert again["teacher_topk_logprobs"] == first["teacher_topk_logprobs"]
    # the stored values are the teacher's own top-k at the labelled positions
    example = tokenize_examples(word_examples(words[:1]), shine.tokenizer, 32, 64, keep_raw=True)[0]
    teacher = encode_teacher(example, shine.tokenizer)
    ((ids, values),) = teacher_topk(shine.base_lm, [teacher["teacher_input_ids"]], [teacher["teacher_labels"]], 0, 8)
    assert ids.tolist() == first[0]["teacher_topk_ids"]
    torch.testing.assert_close(values, torch.tensor(first[0]["teacher_topk_logprobs"]))
    assert len(first[0]["teacher_topk_ids"]) == sum(t != -100 for t in first[0]["labels"])
    # another top_k is another cache entry
    kd_dataset(shine, words, cache_dir=tmp_path, top_k=4)
    assert len(list(tmp_path.glob("teacher-*.arrow"))) == 2


def test_teacher_answers_replace_the_gold_answer_and_are_cached(tmp_path):
    shine = tiny_shine()
    records = [QARecord(id=str(i), source="test", title="t", context=f"The code is {w}.", question="What is the code?",
                        answers=(w,)) for i, w in enumerate(random_words(3))]
    answered = with_teacher_answers(records, shine.base_lm, shine.tokenizer, tmp_path, max_new_tokens=4)
    assert [r.answers[1:] for r in answered] == [r.answers for r in records]
    assert (tmp_path / "teacher-answers.json").is_file()
    again = with_teacher_answers(records, None, shine.tokenizer, tmp_path)  # no model needed: all cached
    assert again == answered


# ---------------------------------------------------------------------------------------------- training


def test_kd_loss_accumulates_per_context(tmp_path):
    """Micro-batches accumulated give the same gradient as one batch, each context weighted equally whatever its
    answer length (per-context averaging)."""
    words = ["ab", "abcdabcdab", "abc", "abcdabcdabcdabcdab"]  # unequal label counts per micro-batch
    grads = []
    for batch, accumulation in ((4, 1), (2, 2)):
        shine = tiny_shine()
        recorder = StepRecorder(shine)
        args = training_args(tmp_path / f"{batch}", max_steps=1, per_device_train_batch_size=batch, optim="sgd",
                             gradient_accumulation_steps=accumulation, objective="kd+ce", max_grad_norm=0.0)
        ShineTrainer(shine, args, train_dataset=kd_dataset(shine, words), callbacks=[recorder]).train()
        grads.append(recorder.grads[0])
    assert_states_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_tiny_kd_run_pulls_the_student_to_the_teacher_and_opens_a_context_gap(tmp_path):
    words = random_words(200, length=8)
    random.Random(0).shuffle(words)
    shine = tiny_shine()
    train_set, eval_set = kd_dataset(shine, words[16:]), kd_dataset(shine, words[:16])
    args = training_args(tmp_path, max_steps=150, per_device_train_batch_size=8, per_device_eval_batch_size=16,
                         learning_rate=3e-3, warmup_steps=10, objective="kd")
    trainer = ShineTrainer(shine, args, train_dataset=train_set, eval_dataset=eval_set)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print(f"\ntiny KD: before {before}\n         after {after}")
    assert after["eval_kd"] < 0.5 * before["eval_kd"]
    assert after["eval_kd"] < after["eval_kd_wrong_context"]
    assert after["eval_kd"] < after["eval_kd_no_adapter"]


def test_build_dataset_adds_targets_only_for_distilling_objectives(tmp_path):
    shine = tiny_shine()
    texts = [" ".join(random_words(3, seed=i, length=4)) for i in range(4)]
    for objective, expected in (("ce", False), ("kd", True), ("kd+ce", True)):
        args = training_args(tmp_path, objective=objective)
        dataset = build_dataset(args, shine.tokenizer, texts, teacher=shine)
        assert ("teacher_topk_ids" in dataset.column_names) == expected
        assert "context" not in dataset.column_names and "dropped_turns" not in dataset.column_names


def test_lora_ceiling_fits_one_context_below_the_untrained_generator():
    from peft_shine.evaluation.ceiling import ceiling_table
    from peft_shine.training.collate import ShineDataCollator

    shine = tiny_shine()
    dataset = kd_dataset(shine, random_words(2, length=10))
    collate = ShineDataCollator(shine.tokenizer.pad_token_id)
    table = ceiling_table(shine, [collate([example]) for example in dataset], loss_weights=(1.0, 1.0),
                          max_steps=60)
    for row in table["examples"]:
        assert row["ceiling_ce"] < 0.5 * row["generated_ce"]
        assert row["ceiling_kd"] < row["generated_kd"]


def test_cli_trains_with_distillation_and_teacher_answers(tiny_run, tmp_path):  # noqa: F811 (fixture)
    import json

    from peft_shine.cli import main

    config = {**json.loads((tiny_run / "config.json").read_text()), "max_context_length": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["train", "--stage", "instruct", "--data", str(tiny_run / "qa.jsonl"), "--base", str(tiny_run / "base"),
                 "--config", str(tmp_path / "config.json"), "--max-steps", "2", "--objective", "kd+ce",
                 "--teacher-answers", "--output", str(tmp_path / "run")]) == 0
    history = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    assert {"eval_kd", "eval_kd_no_adapter", "eval_kd_wrong_context"} <= set(history[-1])
    cache = tmp_path / "run" / "teacher-cache"
    assert (cache / "teacher-answers.json").is_file() and len(list(cache.glob("teacher-*.arrow"))) == 2


# ---------------------------------------------------------------------------------------------- hidden-state matching


def test_hidden_l1_is_zero_for_equal_states_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = torch.randn(5, 3, 16)
    assert hidden_l1(teacher.clone(), teacher.half()).abs().max() < 2e-3  # float16 targets round-trip closely
    assert hidden_l1(teacher, teacher).abs().max() == 0
    moved = teacher.clone()
    moved[2, 1, 0] += 1.0  # one number of one layer of one token
    distance = hidden_l1(moved, teacher)
    assert distance[2] > 0 and distance[[0, 1, 3, 4]].abs().max() == 0
    assert (hidden_l1(2 * teacher, teacher) - 1.0).abs().max() < 1e-5  # scale-aware, unlike a cosine
    with pytest.raises(ValueError, match="do not line up"):
        hidden_l1(teacher[:4], teacher)


def test_hidden_layer_indices_end_at_the_last_layer():
    assert hidden_layer_indices(30, 6) == [4, 9, 14, 19, 24, 29]
    assert hidden_layer_indices(2, 6) == [0, 1]


def kd_hidden_dataset(shine, words: list[str], cache_dir=None):
    raw = tokenize_examples(word_examples(words), shine.tokenizer, 32, 64, keep_raw=True)
    layers = hidden_layer_indices(shine.config.num_base_layers, 2)
    return add_teacher_targets(raw, shine.base_lm, shine.tokenizer, top_k=8, cache_dir=cache_dir,
                               hidden_layers=layers), layers


def test_teacher_hidden_targets_are_the_teacher_states_on_the_answer_positions(tmp_path):
    shine = tiny_shine()
    words = random_words(4)
    dataset, layers = kd_hidden_dataset(shine, words, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("teacher-*.arrow"))) == 1
    kd_dataset(shine, words, cache_dir=tmp_path)  # top-k only: its own cache entry, no hidden column
    assert len(list(tmp_path.glob("teacher-*.arrow"))) == 2
    example = tokenize_examples(word_examples(words[:1]), shine.tokenizer, 32, 64, keep_raw=True)[0]
    teacher = encode_teacher(example, shine.tokenizer)
    labels = torch.tensor([teacher["teacher_labels"]])
    with torch.no_grad(), capture_layer_outputs(find_decoder_layers(shine.base_lm)[1], layers) as captured:
        shine.base_lm(input_ids=torch.tensor([teacher["teacher_input_ids"]]))
    expected = answer_hidden(captured, layers, labels)
    stored = torch.tensor(dataset[0]["teacher_hidden"])
    assert stored.shape == (sum(t != -100 for t in example["labels"]), len(layers), shine.config.hidden_size)
    torch.testing.assert_close(stored, expected.half().float())
    # the student (no context, no adapter) is not the teacher on those positions: the term has work to do
    student = torch.tensor([example["input_ids"]])
    with torch.no_grad(), capture_layer_outputs(find_decoder_layers(shine.base_lm)[1], layers) as captured:
        shine.base_lm(input_ids=student)
    assert hidden_l1(answer_hidden(captured, layers, torch.tensor([example["labels"]])), stored).min() > 1e-3


def test_kd_hidden_objective_adds_the_hidden_term_and_trains_only_the_hypernetwork(tmp_path):
    from peft_shine.training.collate import ShineDataCollator

    weights = {o: training_args(tmp_path, objective=o, hidden_weight=0.5, hidden_layers=2).loss_weights(30)
               for o in ("kd", "kd+ce", "kd+hidden", "kd+ce+hidden")}
    assert {o: (w.ce, w.kd, w.hidden, w.hidden_layers) for o, w in weights.items()} == {
        "kd": (0.0, 1.0, 0.0, ()), "kd+ce": (1.0, 1.0, 0.0, ()), "kd+hidden": (0.0, 1.0, 0.5, (14, 29)),
        "kd+ce+hidden": (1.0, 1.0, 0.5, (14, 29))}
    shine = tiny_shine()
    dataset, _ = kd_hidden_dataset(shine, random_words(4))
    batch = ShineDataCollator(shine.tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    losses = {}
    for objective in ("kd", "kd+hidden"):
        trainer = ShineTrainer(shine, training_args(tmp_path, objective=objective, hidden_layers=2))
        shine.zero_grad()
        losses[objective] = trainer.compute_loss(shine.train(), dict(batch))
        losses[objective].backward()
    assert losses["kd+hidden"] > losses["kd"] + 1e-3  # the hidden term is positive and added
    assert all(p.grad is None for p in shine.base_lm.parameters())  # the base LM stays frozen
    grads = [p.grad for p in shine.hypernetwork_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # the hidden term alone moves the hypernetwork: with kd_weight 0 its gradient is non-zero
    shine.zero_grad()
    trainer = ShineTrainer(shine, training_args(tmp_path, objective="kd+hidden", hidden_layers=2, kd_weight=0.0))
    trainer.compute_loss(shine, dict(batch)).backward()
    assert sum(p.grad.abs().sum() for p in shine.meta_lora_B if p.grad is not None) > 0
