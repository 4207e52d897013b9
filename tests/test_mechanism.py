"""The SHINE mechanism, pinned by tests that could fail."""

from __future__ import annotations

import torch

from conftest import make_shine
from peft_shine.hypernetwork.layout import find_decoder_layers, target_layer_modules
from peft_shine.hypernetwork.lora_binding import LoraBinder, LoraWeights
from peft_shine.hypernetwork.m2p import M2PTransformer
from tiny_models import make_tiny_lm


def test_batched_unmerged_lora_equals_merged_delta_w():
    lm = make_tiny_lm("llama")
    shine = make_shine("llama")
    specs = shine.config.module_specs
    pairs = [(torch.randn(2, 2, s.in_features, 3), torch.randn(2, 2, 3, s.out_features)) for s in specs]
    lora = LoraWeights(pairs, scale=0.05)
    ids = torch.randint(5, 100, (2, 9))
    with shine.apply_lora(lora) as base:
        batched = base(ids).logits
    modules = target_layer_modules(lm, specs)
    for row in range(2):
        merged = make_tiny_lm("llama")
        merged_modules = target_layer_modules(merged, specs)
        with torch.no_grad():
            for layer in range(2):
                for index, (a, b) in enumerate(pairs):
                    delta = 0.05 * (a[row, layer] @ b[row, layer])  # (in, out) = ΔWᵀ
                    merged_modules[layer][index].weight += delta.T
        assert modules[0][0].weight.shape == merged_modules[0][0].weight.shape
        torch.testing.assert_close(batched[row], merged(ids[row:row + 1]).logits[0], atol=1e-5, rtol=1e-4)


def test_rows_grouped_per_lora_use_their_own_lora():
    shine = make_shine("qwen3")
    specs = shine.config.module_specs
    pairs = [(torch.randn(2, 2, s.in_features, 2), torch.randn(2, 2, 2, s.out_features)) for s in specs]
    ids = torch.randint(5, 100, (4, 7))
    with shine.apply_lora(LoraWeights(pairs, scale=0.1)) as base:
        grouped = base(ids).logits  # rows 0,1 → LoRA 0; rows 2,3 → LoRA 1
    for lora_index, rows in ((0, slice(0, 2)), (1, slice(2, 4))):
        single = LoraWeights([(a[lora_index:lora_index + 1], b[lora_index:lora_index + 1]) for a, b in pairs], 0.1)
        with shine.apply_lora(single) as base:
            torch.testing.assert_close(grouped[rows], base(ids[rows]).logits, atol=1e-5, rtol=1e-4)


def test_in_place_lora_without_autograd_equals_the_autograd_path():
    for family in ("llama", "gpt2"):
        shine = make_shine(family)
        specs = shine.config.module_specs
        ids = torch.randint(5, 100, (4, 7))
        for count in (1, 2):  # one LoRA for the batch (addmm_) and one per row group (baddbmm_)
            pairs = [(torch.randn(count, 2, s.in_features, 2), torch.randn(count, 2, 2, s.out_features))
                     for s in specs]
            with shine.apply_lora(LoraWeights(pairs, scale=0.1)) as base:
                with torch.enable_grad():
                    reference = base(ids).logits
                with torch.no_grad():
                    in_place = base(ids).logits
                with torch.inference_mode():
                    inference = base(ids).logits
            assert not torch.equal(reference, shine.base_lm(ids).logits)  # the LoRA does change the output
            torch.testing.assert_close(in_place, reference, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(inference, reference, atol=1e-5, rtol=1e-4)


def test_meta_lora_is_exact_no_op_at_init():
    shine = make_shine("llama")
    ids, mask = shine.tokenize_contexts("Alice moved to Lyon.")
    with torch.no_grad():
        with_meta = shine.encode(ids, mask)
        shine.config.meta_lora_rank, rank = 0, shine.config.meta_lora_rank
        without_meta = shine.encode(ids, mask)
        shine.config.meta_lora_rank = rank
    assert all(torch.count_nonzero(b) == 0 for b in shine.meta_lora_B)
    assert torch.equal(with_meta, without_meta)


def test_memory_slots_never_influence_context_positions():
    shine = make_shine("llama")
    ids, mask = shine.tokenize_contexts(["a short one", "and a longer context here"])
    context_length = ids.shape[1]
    outputs = []
    for seed in (1, 2):
        with torch.no_grad():
            shine.memory_slots.copy_(torch.randn_like(shine.memory_slots, generator=torch.Generator().manual_seed(seed)))
            embeds, full_mask, positions = shine.encoder_inputs(ids, mask)
            hidden = shine.base_lm.base_model(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                                              output_hidden_states=True).hidden_states
        outputs.append(torch.stack(hidden)[:, :, :context_length])
    context_rows = mask.bool()
    torch.testing.assert_close(outputs[0][:, context_rows], outputs[1][:, context_rows], atol=0, rtol=0)


def test_memory_slots_do_see_the_context():
    shine = make_shine("llama")
    with torch.no_grad():
        first = shine.encode(*shine.tokenize_contexts("Alice lives in Lyon."))
        second = shine.encode(*shine.tokenize_contexts("Bob lives in Paris."))
    assert not torch.allclose(first, second)


def test_left_padding_does_not_change_the_memory():
    shine = make_shine("gpt2")  # absolute position embeddings: positions must count from the first real token
    with torch.no_grad():
        alone = shine.encode(*shine.tokenize_contexts("short"))
        batched = shine.encode(*shine.tokenize_contexts(["short", "a much longer context than that"]))
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-4)


def test_m2p_alternates_layer_axis_then_slot_axis():
    torch.manual_seed(0)
    grid = torch.randn(1, 3, 4, 16)
    layer_only = M2PTransformer(3, 4, 16, depth=1, num_heads=2).eval()
    changed = grid.clone()
    changed[0, 1, 2, 0] += 1.0  # one coordinate: the input LayerNorm removes a shift of the whole vector
    difference = (layer_only(changed) - layer_only(grid)).abs().sum(-1)[0]  # (layers, slots)
    assert difference[:, 2].min() > 1e-3  # slot 2 of every layer sees the change across the layer axis
    assert difference[:, [0, 1, 3]].max() == 0  # other slots do not (no slot-axis mixing yet)
    both = M2PTransformer(3, 4, 16, depth=2, num_heads=2).eval()
    assert (both(changed) - both(grid)).abs().sum(-1).min() > 1e-3  # the second layer mixes across slots


def test_m2p_position_embeddings_start_at_zero_and_are_trained():
    shine = make_shine("llama")
    assert torch.count_nonzero(shine.m2p.layer_embedding) == 0
    assert torch.count_nonzero(shine.m2p.slot_embedding) == 0
    assert shine.m2p.layer_embedding.requires_grad and shine.m2p.slot_embedding.requires_grad


def test_binding_is_per_thread_and_restored():
    lm = make_tiny_lm("llama")
    layers_path, layers = find_decoder_layers(lm)
    binder = LoraBinder([[layer.self_attn.q_proj] for layer in layers])
    lora = LoraWeights([(torch.ones(1, 2, 64, 1), torch.ones(1, 2, 1, 64))])
    with binder.bind(lora):
        assert binder.active is lora
        seen = []
        import threading

        thread = threading.Thread(target=lambda: seen.append(binder.active))
        thread.start()
        thread.join()
        assert seen == [None]
    assert binder.active is None
    binder.remove()
