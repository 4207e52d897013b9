"""Warm starts across weight shapes (`peft_shine.training.warm_start`): a wider meta-LoRA computes exactly what the trained
one computes; a new generated rank keeps what the architecture lets it keep."""

from __future__ import annotations

import pytest
import torch

from peft_shine.errors import ConfigError
from peft_shine.modeling_shine import ShineModel
from peft_shine.training.warm_start import (
    adapter_difference,
    kept_slot_rows,
    main,
    resize_hypernetwork,
    widen_hypernetwork,
)
from test_trainer import tiny_shine


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


def trained_tiny(**config) -> ShineModel:
    """A tiny hypernetwork whose meta-LoRA and slot embeddings are non-trivial (as after training)."""
    shine = tiny_shine(meta_lora_rank=3, **config)
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


ATTENTION = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]


def test_a_module_subset_keeps_its_slots_and_where_nothing_dropped_contributed_its_adapters():
    shine = trained_tiny(m2p_num_layers=1, bias_lora_rank=1, generated_gate_init=0.5)
    with torch.no_grad():  # the MLP's meta-LoRA adds nothing, so dropping it cannot change pass 1
        for index, name in enumerate(shine.config.target_modules):
            if name not in ATTENTION:
                shine.meta_lora_B[index].zero_()
        shine.generated_head.gate.copy_(torch.arange(7.0))
        for b in shine.generated_head.bias_B:
            b.normal_()
    small = resize_hypernetwork(shine, target_modules=ATTENTION)
    assert small.config.target_modules == ATTENTION
    assert small.config.num_memory_slots < shine.config.num_memory_slots
    rows = kept_slot_rows(shine.config, [0, 1, 2, 3])
    assert rows.tolist() == list(range(small.config.num_memory_slots))  # attention leads: a prefix of the slots
    torch.testing.assert_close(small.memory_slots, shine.memory_slots[rows])
    torch.testing.assert_close(small.generated_head.gate, shine.generated_head.gate[:4])
    ids = contexts(shine)
    with torch.no_grad():
        before, after = shine.generate_lora(ids).pairs[:4], small.generate_lora(ids).pairs
    assert len(after) == 4
    for (a0, b0), (a1, b1) in zip(before, after):  # causal pass 1 + a layer-axis-only M2P: exactly the same
        torch.testing.assert_close(a1, a0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b1, b0, atol=1e-5, rtol=1e-5)


def test_a_module_subset_out_of_order_and_a_shallower_m2p():
    shine = trained_tiny()
    names = shine.config.target_modules
    small = resize_hypernetwork(shine, target_modules=[names[5], names[0]], m2p_num_layers=1)
    assert small.config.target_modules == [names[0], names[5]]  # the trained order is kept
    assert len(small.m2p.blocks) == 1
    torch.testing.assert_close(small.memory_slots, shine.memory_slots[kept_slot_rows(shine.config, [0, 5])])
    torch.testing.assert_close(small.meta_lora_A[1], shine.meta_lora_A[5])
    for (name, mine), theirs in zip(small.m2p.blocks[0].named_parameters(), shine.m2p.blocks[0].parameters()):
        torch.testing.assert_close(mine, theirs, msg=name)
    assert adapter_difference(shine, small) is None


def test_module_subsets_that_cannot_be_cut_are_refused():
    shine = trained_tiny()
    with pytest.raises(ConfigError, match="not there"):
        resize_hypernetwork(shine, target_modules=["self_attn.q_proj", "mlp.nope"])
    with pytest.raises(ConfigError, match="one resize"):
        resize_hypernetwork(shine, target_modules=ATTENTION, lora_rank=3)
    odd = tiny_shine(lora_rank=3)  # rank 3 on the tiny widths: a module's numbers end inside a slot
    with pytest.raises(ConfigError, match="whole memory slots"):
        resize_hypernetwork(odd, target_modules=ATTENTION)
