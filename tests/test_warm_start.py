"""Warm starts across weight shapes (`peft_shine.training.warm_start`): a wider meta-LoRA computes exactly what the trained
one computes; a new generated rank keeps what the architecture lets it keep."""

from __future__ import annotations

import pytest
import torch

from peft_shine.modeling_shine import ShineModel
from peft_shine.training.warm_start import adapter_difference, main, widen_hypernetwork
from test_trainer import tiny_shine


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


def trained_tiny() -> ShineModel:
    """A tiny hypernetwork whose meta-LoRA and slot embeddings are non-trivial (as after training)."""
    shine = tiny_shine(meta_lora_rank=3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b in shine.meta_lora_B:
            b.copy_(torch.randn(b.shape, generator=generator) * 0.2)
        shine.m2p.slot_embedding.copy_(torch.randn(shine.m2p.slot_embedding.shape, generator=generator) * 0.1)
    return shine


def contexts(shine: ShineModel) -> torch.Tensor:
    return torch.tensor([shine.tokenizer("abcd dcba abca", add_special_tokens=False).input_ids,
                         shine.tokenizer("bbbb cccc dada", add_special_tokens=False).input_ids])


def test_wider_meta_lora_generates_the_same_adapters():
    shine = trained_tiny()
    wide = widen_hypernetwork(shine, meta_lora_rank=8)
    assert wide.config.meta_lora_rank == 8 and wide.meta_lora_A[0].shape[-1] == 8
    assert wide.base_lm is shine.base_lm
    ids = contexts(shine)
    with torch.no_grad():
        before, after = shine.generate_lora(ids), wide.generate_lora(ids)
    for (a0, b0), (a1, b1) in zip(before.pairs, after.pairs):
        torch.testing.assert_close(a1, a0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b1, b0, atol=1e-5, rtol=1e-5)
    # the new components are live: their A columns are random, so B's new rows receive gradient
    assert all(a[..., 3:].abs().sum() > 0 for a in wide.meta_lora_A)
    assert all(b[:, 3:].abs().sum() == 0 for b in wide.meta_lora_B)
    wide.train()
    lora = wide.generate_lora(ids)
    sum(a.sum() + b.sum() for a, b in lora.pairs).backward()
    assert sum(b.grad[:, 3:].abs().sum() for b in wide.meta_lora_B) > 0


def test_new_generated_rank_keeps_the_encoder_and_the_old_slots():
    shine = trained_tiny()
    wider = widen_hypernetwork(shine, lora_rank=4)
    old_slots, new_slots = shine.config.num_memory_slots, wider.config.num_memory_slots
    assert wider.config.lora_rank == 4 and new_slots > old_slots
    torch.testing.assert_close(wider.memory_slots[:old_slots], shine.memory_slots)
    torch.testing.assert_close(wider.m2p.slot_embedding[:old_slots], shine.m2p.slot_embedding)
    assert wider.m2p.slot_embedding[old_slots:].abs().sum() == 0  # fresh-model rule for the new slots
    for mine, theirs in zip(wider.meta_lora_B, shine.meta_lora_B):
        torch.testing.assert_close(mine, theirs)
    for (name, mine), theirs in zip(wider.m2p.blocks.named_parameters(), shine.m2p.blocks.parameters()):
        torch.testing.assert_close(mine, theirs, msg=name)
    # pass 1: the old slots come first, so under causal attention their states are unchanged
    ids = contexts(shine)
    with torch.no_grad():
        torch.testing.assert_close(wider.encode(ids)[:, :, :old_slots], shine.encode(ids), atol=1e-5, rtol=1e-5)
        assert [tuple(a.shape[-1:]) for a, _ in wider.generate_lora(ids).pairs][0] == (4,)


def test_command_line_writes_a_loadable_widened_checkpoint(tmp_path):
    shine = trained_tiny()
    shine.save_pretrained(tmp_path / "trained")
    shine.base_lm.save_pretrained(tmp_path / "base")
    shine.tokenizer.save_pretrained(tmp_path / "base")
    assert main([str(tmp_path / "trained"), str(tmp_path / "wide"), "--meta-lora-rank", "6",
                 "--base", str(tmp_path / "base")]) == 0
    wide = ShineModel.from_pretrained(tmp_path / "wide", base_model=shine.base_lm, tokenizer=shine.tokenizer)
    assert wide.config.meta_lora_rank == 6
    with torch.no_grad():
        for (a0, b0), (a1, b1) in zip(shine.generate_lora(contexts(shine)).pairs,
                                      wide.generate_lora(contexts(shine)).pairs):
            torch.testing.assert_close(a1, a0, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(b1, b0, atol=1e-5, rtol=1e-5)
    assert adapter_difference(shine, wide) < 1e-5
    assert adapter_difference(shine, widen_hypernetwork(shine, lora_rank=4)) is None
    moved = widen_hypernetwork(shine, meta_lora_rank=6)
    with torch.no_grad():
        moved.meta_lora_B[0][:, 5] += 0.5  # a new component switched on: the adapters change, and the check sees it
    assert adapter_difference(shine, moved) > 1e-4
    with pytest.raises(ValueError, match="only grow"):
        widen_hypernetwork(shine, meta_lora_rank=2)
