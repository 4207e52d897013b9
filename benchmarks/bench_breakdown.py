"""Where the time of ``generate_adapter`` goes, stage by stage, next to the base model's own prefill.

Per context length, in one run and on the same model: the base's prefill of the context alone (forward + KV cache,
last logit only), the base's prefill of the context **plus the memory slots** (the same number of positions as the
encoder pass), then each stage of ``generate_adapter``: tokenisation (and the length check), the encoder pass (pass
1 with the meta-LoRA, memory states captured), the M2P over the ``layers × slots`` grid, slicing the grid into LoRA
factors, the export into peft (state dict + copy into the existing adapter), and the whole call.

The shipped hypernetwork was trained with ``max_context_length = 512``; that number is a limit, not a weight shape,
so the benchmark raises it on the loaded config and the same weights read longer contexts (SmolLM2 has 8,192
positions: the longest context is ``8192 − slots`` tokens). Answers from contexts beyond 512 tokens are outside what
the checkpoint was trained on; their *cost* is what is measured here.

The analytic line (``flops``): model FLOPs of the M2P (fixed per context: ``layers × slots`` grid cells through
every encoder layer) against the prefill's (growing with the context). The M2P is a floor under
``generate_adapter / prefill``: ``(prefill(n + slots) + m2p) / prefill(n)`` cannot reach 1.1 while the M2P alone is
more than 10 % of the prefill.
"""

from __future__ import annotations

import torch

from peft_shine.adapter_store import add_adapters, all_adapters_disabled
from peft_shine.contexts import context_token_ids, left_pad, pad_token_id
from peft_shine.export import peft_state_dict
from peft_shine.layout import slice_parameter_grid
from peft_shine.lora_binding import LoraWeights

from .bench_gpu import forward_flops
from .timing import median_seconds
from .workloads import context_of_length


NAME = "breakdown"  # the adapter the benchmark writes into (replaced in place after its first creation)


def longest_context(shine) -> int:
    """The longest context the base can read with the memory slots after it."""
    return shine.base_lm.config.max_position_embeddings - shine.config.num_memory_slots


def m2p_flops(shine) -> float:
    """Model FLOPs of the M2P for one context: every encoder layer over the ``L × M`` grid cells (projections and
    feed-forward: 2 × weights per cell; attention along the layer axis or the slot axis: 4 × sequence × width)."""
    layers, slots, hidden = shine.config.num_base_layers, shine.config.num_memory_slots, shine.config.hidden_size
    cells, total = layers * slots, 0.0
    for index, block in enumerate(shine.m2p.blocks):
        weights = sum(p.numel() for name, p in block.named_parameters() if p.dim() == 2)
        sequence = layers if index % 2 == 0 else slots
        total += cells * (2 * weights + 4 * sequence * hidden)
    return total


def flop_model(shine, tokens: int) -> dict:
    """Analytic FLOPs: prefill of the context, of the context + slots, the M2P; the ratios they imply."""
    config, slots = shine.base_lm.config, shine.config.num_memory_slots
    prefill = forward_flops(config, tokens, logits_tokens=1)
    with_slots = forward_flops(config, tokens + slots, logits_tokens=1)
    m2p = m2p_flops(shine)
    return {"prefill_gflop": prefill / 1e9, "prefill_slots_gflop": with_slots / 1e9, "m2p_gflop": m2p / 1e9,
            "floor_over_prefill": (with_slots + m2p) / prefill, "floor_over_prefill_slots": (with_slots + m2p)
            / with_slots}


def _stage_inputs(shine, text: str):
    token_ids = context_token_ids(shine.tokenizer, [text], shine.config.max_context_length)
    ids, mask = left_pad(token_ids, pad_token_id(shine.tokenizer))
    return ids, mask


def stage_seconds(shine, text: str, repeats: int) -> dict:
    """Median seconds of each stage of ``generate_adapter`` on one context (the adapter ``NAME`` exists)."""
    config, base = shine.config, shine.base_lm
    ids, mask = _stage_inputs(shine, text)
    with torch.no_grad():
        grid = shine.encode(ids, mask)
        params = shine.m2p(grid)
        lora = LoraWeights(slice_parameter_grid(params, config.module_specs, config.lora_rank), scale=config.lora_scale)
        peft_config = shine.adapter_lora_config()

        def export() -> None:
            state = peft_state_dict(base, config.module_specs, lora, 0)
            add_adapters(base, shine.peft_model, peft_config, {NAME: state})

        return {
            "tokenize_s": median_seconds(lambda: _stage_inputs(shine, text), repeats),
            "encoder_s": median_seconds(lambda: shine.encode(ids, mask), repeats),
            "m2p_s": median_seconds(lambda: shine.m2p(grid), repeats),
            "slice_s": median_seconds(lambda: slice_parameter_grid(params, config.module_specs, config.lora_rank),
                                      repeats),
            "export_s": median_seconds(export, repeats),
        }


def prefill_seconds(shine, text: str, repeats: int) -> dict:
    """The base's prefill of the context alone and of the context + memory slots (the encoder's positions), with
    every peft adapter switched off, as the encoder pass runs."""
    base = shine.base_lm
    ids, mask = _stage_inputs(shine, text)
    embeds, full_mask, positions = shine.encoder_inputs(ids, mask)
    with torch.inference_mode(), all_adapters_disabled(base):
        alone = median_seconds(lambda: base(ids, use_cache=True, logits_to_keep=1), repeats)
        with_slots = median_seconds(lambda: base(inputs_embeds=embeds, attention_mask=full_mask,
                                                 position_ids=positions, use_cache=True, logits_to_keep=1), repeats)
    return {"prefill_s": alone, "prefill_slots_s": with_slots}


def breakdown(shine, lengths: list[int], repeats: int) -> list[dict]:
    """One row per context length (capped at `longest_context`): prefills, stages, total, ratios and FLOPs."""
    shine.config.max_context_length = max(shine.config.max_context_length, *lengths)
    shine.eval()
    rows = []
    for requested in lengths:
        tokens = min(requested, longest_context(shine))
        text = context_of_length(shine.tokenizer, tokens)
        shine.generate_adapter(text, adapter_names=NAME)  # warm: the adapter exists, later calls copy in place
        row = {"context_tokens": len(context_token_ids(shine.tokenizer, [text], tokens)[0])}
        row |= prefill_seconds(shine, text, repeats)
        row |= stage_seconds(shine, text, repeats)
        row["generate_adapter_s"] = median_seconds(lambda text=text: shine.generate_adapter(text, adapter_names=NAME),
                                                   repeats)
        row["adapter_over_prefill"] = row["generate_adapter_s"] / row["prefill_s"]
        row["adapter_over_prefill_slots"] = row["generate_adapter_s"] / row["prefill_slots_s"]
        row["overhead_s"] = row["generate_adapter_s"] - row["encoder_s"]
        row |= flop_model(shine, row["context_tokens"])
        rows.append(row)
    shine.delete_adapters(NAME)
    return rows
