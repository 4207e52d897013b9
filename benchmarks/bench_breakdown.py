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

from collections.abc import Callable

import torch

from peft_shine.adapters.contexts import context_token_ids, left_pad, pad_token_id
from peft_shine.adapters.export import peft_state_dict
from peft_shine.adapters.store import add_adapters, all_adapters_disabled
from peft_shine.hypernetwork.layout import slice_parameter_grid
from peft_shine.hypernetwork.lora_binding import LoraWeights

from .bench_gpu import forward_flops
from .timing import interleaved_medians
from .workloads import context_of_length


LONG_CONTEXT = 4096  # from here on one timed round per function
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


def timed_steps(shine, text: str) -> dict[str, Callable[[], object]]:
    """The functions the breakdown times on one context: the base's prefill of the context alone and of the context
    + memory slots (every peft adapter off, as in the encoder pass), each stage of ``generate_adapter`` and the whole
    call (the adapter ``NAME`` exists, so the export copies in place)."""
    config, base = shine.config, shine.base_lm
    ids, mask = _stage_inputs(shine, text)
    embeds, full_mask, positions = shine.encoder_inputs(ids, mask)
    with torch.no_grad():
        grid = shine.encode(ids, mask)
        params = shine.m2p(grid)
    lora = LoraWeights(slice_parameter_grid(params, config.module_specs, config.lora_rank), scale=config.lora_scale)
    peft_config = shine.adapter_lora_config()

    def prefill(**inputs) -> Callable[[], object]:
        def run() -> None:
            with torch.inference_mode(), all_adapters_disabled(base):
                base(**inputs, use_cache=True, logits_to_keep=1)
        return run

    def no_grad(fn: Callable[[], object]) -> Callable[[], object]:
        return torch.no_grad()(fn)

    return {
        "prefill_s": prefill(input_ids=ids),
        "prefill_slots_s": prefill(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions),
        "tokenize_s": lambda: _stage_inputs(shine, text),
        "encoder_s": no_grad(lambda: shine.encode(ids, mask)),
        "m2p_s": no_grad(lambda: shine.m2p(grid)),
        "slice_s": lambda: slice_parameter_grid(params, config.module_specs, config.lora_rank),
        "export_s": no_grad(lambda: add_adapters(base, shine.peft_model, peft_config,
                                                 {NAME: peft_state_dict(base, config.module_specs, lora, 0)})),
        "generate_adapter_s": lambda: shine.generate_adapter(text, adapter_names=NAME),
    }


def breakdown(shine, lengths: list[int], repeats: int) -> list[dict]:
    """One row per context length (capped at `longest_context`): prefills, stages, total, ratios and FLOPs. Every
    function of a row is timed in turns (`interleaved_medians`), so the ratios hold on a shared machine."""
    shine.config.max_context_length = max(shine.config.max_context_length, *lengths)
    shine.eval()
    rows = []
    for requested in lengths:
        tokens = min(requested, longest_context(shine))
        text = context_of_length(shine.tokenizer, tokens)
        shine.generate_adapter(text, adapter_names=NAME)  # warm: the adapter exists, later calls copy in place
        row = {"context_tokens": len(context_token_ids(shine.tokenizer, [text], tokens)[0])}
        long = tokens >= LONG_CONTEXT  # one timed round (a minute or more each), the warm-up call above suffices
        row |= interleaved_medians(timed_steps(shine, text), 1 if long else repeats, 0 if long else 1)
        row["adapter_over_prefill"] = row["generate_adapter_s"] / row["prefill_s"]
        row["adapter_over_prefill_slots"] = row["generate_adapter_s"] / row["prefill_slots_s"]
        row["overhead_s"] = row["generate_adapter_s"] - row["encoder_s"]
        row |= flop_model(shine, row["context_tokens"])
        rows.append(row)
    shine.delete_adapters(NAME)
    return rows
