"""The in-batch contrastive term: InfoNCE over the batch's adapters, checked against separate answer passes, safe
with one context, and on a toy task it widens the context-specific gap more than plain cross-entropy."""

from __future__ import annotations

import math
import random

import pytest
import torch

from peft_shine.hypernetwork.losses import LossWeights, contrastive_nce, per_context_mean
from peft_shine.training.arguments import ShineTrainingArguments
from peft_shine.training.trainer import ShineTrainer
from test_trainer import random_words, tiny_shine, training_args, word_dataset


def test_infonce_is_log_of_the_choices_when_adapters_agree_and_falls_when_its_own_wins():
    same = torch.full((3, 3), 2.0)
    torch.testing.assert_close(contrastive_nce(same), torch.full((3,), math.log(3)))
    sharp = torch.tensor([[0.1, 5.0, 6.0]])
    assert contrastive_nce(sharp).item() == pytest.approx(math.log(1 + math.exp(-4.9) + math.exp(-5.9)), rel=1e-5)
    assert contrastive_nce(sharp, temperature=10.0).item() > contrastive_nce(sharp).item()
    nll = torch.tensor([[1.0, 1.0]], requires_grad=True)
    contrastive_nce(nll).sum().backward()
    torch.testing.assert_close(nll.grad, torch.tensor([[0.5, -0.5]]))  # own pushed down, the other up


def _batch(shine, words: list[str]):
    data = word_dataset(words)
    ids, mask = shine.tokenize_contexts(words)
    width = max(len(row) for row in data["input_ids"])
    conversation = torch.tensor([row + [0] * (width - len(row)) for row in data["input_ids"]])
    labels = torch.tensor([row + [-100] * (width - len(row)) for row in data["labels"]])
    attention = (torch.arange(width)[None] < torch.tensor([len(r) for r in data["input_ids"]])[:, None]).long()
    return {"context_input_ids": ids, "context_attention_mask": mask, "input_ids": conversation, "labels": labels,
            "attention_mask": attention}


def _row_nll(shine, batch: dict, shift: int) -> torch.Tensor:
    """Mean answer NLL per token of every row under the adapter of the context ``shift`` rows before its own, from a
    plain forward with the context batch rolled (an independent path)."""
    rolled = {**batch, "context_input_ids": batch["context_input_ids"].roll(shift, 0),
              "context_attention_mask": batch["context_attention_mask"].roll(shift, 0)}
    lora = shine.generate_lora(rolled["context_input_ids"], rolled["context_attention_mask"])
    logits, targets, keep = shine.answer_logits(lora, batch["input_ids"], batch["labels"], batch["attention_mask"])
    ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    return per_context_mean(ce, keep.nonzero()[:, 0], batch["labels"].shape[0])


def test_contrastive_loss_equals_separate_passes_under_the_other_adapters():
    shine = tiny_shine(lora_scale=0.3)
    batch = _batch(shine, ["abcab", "dcba", "bbbcccd", "cadda"])
    weights = LossWeights(ce=1.0, contrastive=0.7, temperature=0.5, negatives=2)
    with torch.no_grad():
        output = shine(**batch, loss_weights=weights)
        plain = shine(**batch).loss
        nll = torch.stack([_row_nll(shine, batch, shift) for shift in range(3)], dim=1)
    expected_term = contrastive_nce(nll, 0.5).mean()
    torch.testing.assert_close(output.loss, plain + 0.7 * expected_term, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.contrastive, expected_term, atol=1e-5, rtol=1e-5)


def test_one_context_has_no_contrastive_term_and_finite_gradients():
    shine = tiny_shine(lora_scale=0.3).train()
    batch = _batch(shine, ["abcab"])
    output = shine(**batch, loss_weights=LossWeights(contrastive=1.0, negatives=3))
    assert output.contrastive is None
    torch.testing.assert_close(output.loss, shine(**batch).loss)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in shine.hypernetwork_parameters() if p.grad is not None)


def test_objective_flags_turn_into_loss_weights(tmp_path):
    args = training_args(tmp_path, objective="ce+contrastive", contrastive_weight=0.3, contrastive_negatives=3)
    weights = args.loss_weights(4)
    assert (weights.ce, weights.kd, weights.contrastive, weights.negatives) == (1.0, 0.0, 0.3, 3)
    assert not args.distills and training_args(tmp_path, objective="kd+ce+contrastive").distills
    assert training_args(tmp_path).loss_weights(4).contrastive == 0.0
    with pytest.raises(ValueError, match="contrastive_temperature"):
        ShineTrainingArguments(output_dir=str(tmp_path), contrastive_temperature=0.0)


def _gap_after_training(tmp_path, objective: str, words: list[str], held_out: list[str]) -> dict[str, float]:
    torch.manual_seed(0)
    shine = tiny_shine()
    args = training_args(tmp_path / objective, max_steps=60, per_device_train_batch_size=4,
                         per_device_eval_batch_size=8, learning_rate=3e-3, warmup_steps=5, objective=objective,
                         contrastive_negatives=3,
                         train_sampling_strategy="group_by_length")
    trainer = ShineTrainer(shine, args, train_dataset=word_dataset(words), eval_dataset=word_dataset(held_out))
    probe = _batch(shine, held_out[:4])
    weights = LossWeights(contrastive=1.0, negatives=3)
    with torch.no_grad():
        before = shine.eval()(**probe, loss_weights=weights).contrastive.item()
    trainer.train()
    metrics = trainer.evaluate()
    with torch.no_grad():
        after = shine.eval()(**probe, loss_weights=weights).contrastive.item()
    return {"gap": metrics["eval_loss_wrong_context"] - metrics["eval_loss"], "term_before": before,
            "term_after": after, **metrics}


def test_contrastive_objective_widens_the_context_specific_gap_more_than_cross_entropy(tmp_path):
    words = random_words(120, seed=3)
    random.Random(0).shuffle(words)
    plain = _gap_after_training(tmp_path, "ce", words[16:], words[:16])
    contrastive = _gap_after_training(tmp_path, "ce+contrastive", words[16:], words[:16])
    print(f"\nce: {plain}\nce+contrastive: {contrastive}")
    assert contrastive["term_after"] < contrastive["term_before"] - 0.1  # starts near log(4)
    assert contrastive["term_after"] < plain["term_after"]
    assert contrastive["gap"] > plain["gap"]
    assert contrastive["eval_own_adapter_top1"] >= plain["eval_own_adapter_top1"]


@pytest.mark.parametrize("name", ["smollm2-ablation-contrastive-cpu.yaml", "smollm2-stage1-squad-cpu-bf16.yaml"])
def test_the_recipes_parse_and_pick_the_base_dtype_at_run_time(name, tmp_path, monkeypatch):
    from pathlib import Path

    from peft_shine.cli import build_parser
    from peft_shine.storage.cpu_features import cpu_has_fast_bf16
    from peft_shine.storage.io_utils import read_mapping
    from peft_shine.training.recipe import training_arguments, training_placement

    path = Path(__file__).parents[1] / "configs" / name
    args = build_parser().parse_args(["train", "--stage", "instruct", "--data", "x", "--output", str(tmp_path),
                                      "--config", str(path), "--objective", "ce+contrastive"])
    config = read_mapping(path)
    parsed = training_arguments(args, {k: v for k, v in config.items() if k not in ("model", "base_dtype")})
    assert parsed.per_device_train_batch_size >= 4 and parsed.train_sampling_strategy == "group_by_length"
    assert parsed.loss_weights(30).contrastive > 0
    for decision, dtype in (("1", torch.bfloat16), ("0", torch.float32)):
        monkeypatch.setenv("SHINE_CPU_BF16", decision)
        cpu_has_fast_bf16.cache_clear()
        assert training_placement(args, config).dtype == dtype
    cpu_has_fast_bf16.cache_clear()
    args.dtype = "fp32"  # the flag wins over the file
    assert training_placement(args, config).dtype == torch.float32
