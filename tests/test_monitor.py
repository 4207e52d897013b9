"""Evaluation during training: the own-adapter top-1 rate among the held-out adapters, the adapters' mean pairwise
cosine, and the held-out losses merged into stock `evaluate()` (``compute_metrics`` honoured)."""

from __future__ import annotations

import itertools

import pytest
import torch

from peft_shine.hypernetwork.lora_binding import LoraWeights
from peft_shine.training.monitor import adapter_discrimination, mean_pairwise_cosine
from peft_shine.training.trainer import ShineTrainer
from test_contrastive import _batch
from test_trainer import random_words, tiny_shine, training_args, word_dataset


WORDS = ["abcab", "dcba", "bbbcccd", "cadda"]


def _updates(lora: LoraWeights) -> torch.Tensor:
    """The flattened weight update ``A @ B`` of every module and layer of a one-LoRA `LoraWeights`."""
    return torch.cat([(a[0] @ b[0]).flatten() for a, b in lora.pairs]).double()


def test_mean_pairwise_cosine_equals_the_materialised_updates():
    shine = tiny_shine(lora_scale=0.3)
    with torch.no_grad():
        lora = shine.generate_lora(*shine.tokenize_contexts(WORDS[:3]))
    single = [LoraWeights([(a[i:i + 1], b[i:i + 1]) for a, b in lora.pairs]) for i in range(3)]
    flat = [_updates(one) for one in single]
    expected = sum(torch.nn.functional.cosine_similarity(x, y, dim=0).item()
                   for x, y in itertools.combinations(flat, 2)) / 3
    assert mean_pairwise_cosine(single) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert mean_pairwise_cosine([single[0], single[0]]) == pytest.approx(1.0)
    assert mean_pairwise_cosine(single[:1]) is None


def test_adapter_discrimination_matches_every_pairing_scored_alone():
    shine = tiny_shine(lora_scale=0.3).eval()
    batches = [_batch(shine, WORDS[:2]), _batch(shine, WORDS[2:])]
    with torch.no_grad():
        result = adapter_discrimination(shine, batches)
        everything = _batch(shine, WORDS)
        nll = torch.zeros(4, 4)
        for row, adapter in itertools.product(range(4), range(4)):
            output = shine(context_input_ids=everything["context_input_ids"][adapter:adapter + 1],
                           context_attention_mask=everything["context_attention_mask"][adapter:adapter + 1],
                           input_ids=everything["input_ids"][row:row + 1], labels=everything["labels"][row:row + 1])
            nll[row, adapter] = output.loss  # one row: the mean answer NLL per token
    own = nll.diagonal()
    others = (nll + torch.diag(torch.full((4,), float("inf")))).min(dim=1).values
    assert result["own_adapter_top1"] == pytest.approx((own < others).double().mean().item())
    assert result["own_adapter_margin"] == pytest.approx((others - own).mean().item(), abs=1e-4)
    assert 0.0 < result["adapter_cosine"] < 1.0


def test_compute_metrics_is_honoured_and_the_held_out_losses_merged(tmp_path):
    shine = tiny_shine().eval()
    seen = []

    def compute_metrics(prediction) -> dict[str, float]:
        seen.append(prediction)
        return {"custom": 42.0}

    data = word_dataset(WORDS)
    plain = ShineTrainer(shine, training_args(tmp_path), eval_dataset=data).evaluate()
    merged = ShineTrainer(shine, training_args(tmp_path), eval_dataset=data, compute_metrics=compute_metrics).evaluate()
    assert seen and merged["eval_custom"] == 42.0
    for key in ("eval_loss", "eval_loss_no_adapter", "eval_loss_wrong_context", "eval_own_adapter_top1",
                "eval_adapter_cosine"):
        assert merged[key] == pytest.approx(plain[key], rel=1e-6), key
    assert "eval_runtime" in plain and "eval_samples_per_second" in plain  # the stock evaluate() ran
    quiet = ShineTrainer(shine, training_args(tmp_path, eval_discrimination=False), eval_dataset=data).evaluate()
    assert "eval_own_adapter_top1" not in quiet and quiet["eval_loss"] == pytest.approx(plain["eval_loss"])


def test_discrimination_scores_only_the_leading_contexts(tmp_path):
    from peft_shine.training.monitor import leading_batches

    words = random_words(10, seed=5)
    shine = tiny_shine()
    trainer = ShineTrainer(shine, training_args(tmp_path, eval_discrimination_contexts=4),
                           eval_dataset=word_dataset(words))
    batches = [trainer._prepare_inputs(batch) for batch in trainer.get_eval_dataloader()]
    assert [len(leading_batches(batches, n)) for n in (1, 2, 3, 4, 10)] == [1, 1, 2, 2, 5]  # batches of 2
    metrics = trainer.evaluate()
    expected = adapter_discrimination(shine.eval(), batches[:2])
    assert metrics["eval_own_adapter_top1"] == pytest.approx(expected["own_adapter_top1"])
    assert metrics["eval_adapter_cosine"] == pytest.approx(expected["adapter_cosine"])
    everything = ShineTrainer(shine, training_args(tmp_path), eval_dataset=word_dataset(words)).evaluate()
    assert everything["eval_loss"] == pytest.approx(metrics["eval_loss"])  # the losses still cover every context
    with pytest.raises(ValueError, match="eval_discrimination_contexts"):
        training_args(tmp_path, eval_discrimination_contexts=1)
