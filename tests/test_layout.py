"""Layout discovery and the exact "rl" slicing of a parameter grid into LoRA A/B."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

from peft_shine import ShineConfig, UnsupportedModelError
from peft_shine.hypernetwork.layout import (
    ModuleSpec,
    discover_modules,
    layer_lora_numel,
    slice_offsets,
    slice_parameter_grid,
)
from tiny_models import FAMILIES, make_tiny_lm


def smollm2_like_config() -> LlamaConfig:
    """SmolLM2-135M's shapes (no weights needed: the layout is read on the meta device)."""
    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, vocab_size=49152)


def qwen3_8b_specs() -> list[ModuleSpec]:
    h, q, kv, i = 4096, 4096, 1024, 12288
    return [ModuleSpec("q", h, q), ModuleSpec("k", h, kv), ModuleSpec("v", h, kv), ModuleSpec("o", q, h),
            ModuleSpec("gate", h, i), ModuleSpec("up", h, i), ModuleSpec("down", i, h)]


@pytest.mark.parametrize("family", FAMILIES)
def test_memory_slots_hold_one_layer_of_lora(family):
    config = ShineConfig.from_base_model(make_tiny_lm(family), lora_rank=2)
    lora_numel = layer_lora_numel(config.module_specs, config.lora_rank)
    slots = config.num_memory_slots
    assert slots * config.hidden_size >= lora_numel > (slots - 1) * config.hidden_size


def test_smollm2_memory_slots_exact_and_ceil_rule():
    exact = ShineConfig.from_base_model(smollm2_like_config(), lora_rank=3)
    assert sum(spec.lora_size for spec in exact.module_specs) == 10_176
    assert exact.num_memory_slots == 53 and 53 * 576 == 10_176 * 3  # no surplus
    ceil = ShineConfig.from_base_model(smollm2_like_config(), lora_rank=4)
    assert ceil.num_memory_slots == 71  # ceil(40704 / 576) = ceil(70.67); 384 numbers per row unused


def test_slice_offsets_match_qwen3_8b_reference():
    ends = [end for _, _, _, end in slice_offsets(qwen3_8b_specs(), rank=8)]
    b_starts = [b for _, _, b, _ in slice_offsets(qwen3_8b_specs(), rank=8)]
    assert b_starts == [32768, 98304, 139264, 180224, 245760, 376832, 573440]
    assert ends == [65536, 106496, 147456, 212992, 344064, 475136, 606208]
    assert ends[-1] == 148 * 4096


def test_slicing_reads_rows_in_rl_layout_without_copies():
    specs = [ModuleSpec("q", 4, 6), ModuleSpec("down", 6, 4)]
    rank, hidden = 2, 8
    slots = -(-layer_lora_numel(specs, rank) // hidden)
    grid = torch.arange(2 * 3 * slots * hidden, dtype=torch.float32).reshape(2, 3, slots, hidden)
    (a_q, b_q), (a_d, b_d) = slice_parameter_grid(grid, specs, rank)
    row = grid[1, 2].flatten()
    assert a_q.shape == (2, 3, 4, 2) and b_q.shape == (2, 3, 2, 6)
    assert a_q[1, 2, 3, 1] == row[3 * rank + 1]
    assert b_q[1, 2, 1, 5] == row[4 * rank + 1 * 6 + 5]
    start = 4 * rank + rank * 6
    assert a_d[1, 2, 5, 0] == row[start + 5 * rank]
    assert b_d[1, 2, 1, 3] == row[start + 6 * rank + 1 * 4 + 3]
    for tensor in (a_q, b_q, a_d, b_d):
        assert tensor.untyped_storage().data_ptr() == grid.untyped_storage().data_ptr()


def test_gpt2_conv1d_shapes_and_fused_qkv():
    specs = discover_modules(make_tiny_lm("gpt2"))
    assert [(s.name, s.in_features, s.out_features) for s in specs] == [
        ("attn.c_attn", 64, 192), ("attn.c_proj", 64, 64), ("mlp.c_fc", 64, 96), ("mlp.c_proj", 96, 64)]


def tiny_neox():
    config = GPTNeoXConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=96)
    return AutoModelForCausalLM.from_config(config)


def test_unsupported_family_names_the_fix():
    with pytest.raises(UnsupportedModelError, match="target_modules=.*attention.query_key_value"):
        ShineConfig.from_base_model(tiny_neox())


def test_unsupported_family_works_with_explicit_targets():
    targets = ["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]
    config = ShineConfig.from_base_model(tiny_neox(), target_modules=targets)
    assert config.target_modules == targets and config.module_shapes[0] == [64, 192]


def test_missing_target_module_lists_available_ones():
    with pytest.raises(UnsupportedModelError, match="no submodule 'mlp.nope'.*q_proj"):
        ShineConfig.from_base_model(make_tiny_lm("llama"), target_modules=["mlp.nope"])


def test_config_rejects_too_few_memory_slots():
    with pytest.raises(ValueError, match="num_memory_slots=3 is too small"):
        ShineConfig.from_base_model(make_tiny_lm("llama"), num_memory_slots=3)
