"""Warm starts across weight shapes: a trained hypernetwork resized to another meta-LoRA or generated LoRA rank, a
subset of its target modules (fewer memory slots) or another M2P depth.

These change weight shapes, so such a hypernetwork cannot load a trained checkpoint as is. `resize_hypernetwork`
builds the resized model from the trained one:

* **meta-LoRA rank r → R ≥ r: function-preserving.** The trained rank components are kept (``A[..., :r]``,
  ``B[:, :r]``); the new ``A`` columns are drawn like a fresh meta-LoRA (normal, std ``sqrt(meta_lora_init_scale)``)
  and the new ``B`` rows are zero, so the widened meta-LoRA adds exactly what the trained one adds and the generated
  adapters are identical at the start; the new components still receive gradients (through ``B``).
* **generated rank r → R: not function-preserving, and no warm start can be in this architecture.** The slot count
  follows the rank (``M = ceil(D·R/H)``) and the parameter grid is read in the "rl" layout (`layout`): each input
  row of ``A`` takes ``R`` consecutive numbers, so every old number lands at another (slot, channel) cell of the
  grid, and the M2P's slot-axis attention lets every old slot attend to the new ones. What is kept: the meta-LoRA,
  the M2P blocks and layer embeddings, and the first ``M_old`` memory slots and slot embeddings (the new slots are
  appended after them, so the pass-1 states of the old slots are unchanged under causal attention). New memory slots
  start at random token embeddings of the base LM and new slot embeddings at zero, exactly as in a fresh model. The
  generated adapter at the start is the trained M2P's output re-read in the new layout: a different adapter.
* **a subset of the target modules: fewer memory slots, close but not exact.** Where every module's ``A`` and ``B``
  fill whole slots (SmolLM2 at rank 3: q 3+3, k 3+1, v 3+1, o 3+3, gate 3+8, up 3+8, down 8+3 slots), the kept
  modules' slots, slot embeddings, meta-LoRA, bias LoRA and gate are copied. The generated LoRA of the kept modules
  changes only through what is gone: the dropped modules' meta-LoRA in pass 1, the dropped slots under causal
  attention (none when the kept modules lead the order, e.g. the attention projections: 20 of 53 slots), and the
  M2P's slot-axis attention over fewer slots.
* **M2P depth N: the first N trained blocks are kept** (a deeper M2P's new blocks start fresh, which is not the
  identity for a post-LN block). Depth 1 keeps only attention across LM layers: slots no longer see each other.

Command line: ``python -m peft_shine.training.warm_start SRC DST --meta-lora-rank 32`` (or ``--lora-rank 6``,
``--target-modules self_attn.q_proj,self_attn.k_proj,self_attn.v_proj,self_attn.o_proj``, ``--m2p-layers 1``)
writes the resized hypernetwork to ``DST``; ``shine train --init-from DST`` then continues from it.
"""

from __future__ import annotations

import argparse
import math

import torch

from peft_shine.errors import ConfigError
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.hypernetwork.layout import slice_offsets
from peft_shine.modeling_shine import ShineModel
from peft_shine.storage.base_models import load_base_model


CHECK_TEXT = "The Normans gave their name to Normandy, a region in France, in the 10th and 11th centuries."


def resize_hypernetwork(trained: ShineModel, meta_lora_rank: int | None = None, lora_rank: int | None = None,
                        target_modules: list[str] | None = None, m2p_num_layers: int | None = None,
                        seed: int = 0) -> ShineModel:
    """A copy of ``trained`` (base LM attached) with another ``meta_lora_rank``, ``lora_rank``, subset of
    ``target_modules`` or M2P depth, initialised from its weights as described in the module docstring. The new
    model shares the base LM."""
    old = trained.config
    meta_rank = old.meta_lora_rank if meta_lora_rank is None else meta_lora_rank
    rank = old.lora_rank if lora_rank is None else lora_rank
    if meta_rank < old.meta_lora_rank:
        raise ConfigError(f"meta_lora_rank can only grow ({old.meta_lora_rank} -> {meta_rank}).")
    kept = module_subset(old, target_modules)
    if kept is not None and rank != old.lora_rank:
        raise ConfigError("Change target_modules or lora_rank in one resize, not both: run the tool twice.")
    values = old.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "num_memory_slots", "base_fingerprint"):
        values.pop(key, None)
    if kept is not None:
        values["target_modules"] = [old.target_modules[i] for i in kept]
        values["module_shapes"] = [old.module_shapes[i] for i in kept]
    if m2p_num_layers is not None:
        values["m2p_num_layers"] = m2p_num_layers
    config = ShineConfig(**{**values, "meta_lora_rank": meta_rank, "lora_rank": rank})
    torch.manual_seed(seed)
    model = ShineModel(config).attach_base_model(trained.base_lm, trained.tokenizer)
    model.init_memory_from_embeddings(seed)  # the fresh-model rule, kept for new slots only
    slot_rows = None if kept is None else kept_slot_rows(old, kept)
    source = dict(trained.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            value = None if name.startswith("base_lm.") else source_value(name, source, kept)
            if value is None:
                continue  # a new tensor (a deeper M2P's extra block): its fresh initialisation stays
            if name.startswith("meta_lora_A."):  # (layers, in, r): trained columns first, fresh columns after
                fresh = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)) \
                    * math.sqrt(config.meta_lora_init_scale)
                param.copy_(fresh.to(param))
                param[..., : value.shape[-1]] = value
            elif name.startswith("meta_lora_B."):  # (layers, r, out): trained rows first, zero rows after
                param.zero_()
                param[:, : value.shape[1]] = value
            elif name in ("memory_slots", "m2p.slot_embedding"):
                if slot_rows is not None:  # the kept modules' slots, in order
                    param.copy_(value[slot_rows])
                else:  # old slots first (they keep their states)
                    count = min(value.shape[0], param.shape[0])
                    param[:count] = value[:count]
            else:
                param.copy_(value)
    return model.eval()


widen_hypernetwork = resize_hypernetwork  # the name of releases before target-module subsets


def module_subset(config: ShineConfig, target_modules: list[str] | None) -> list[int] | None:
    """Indices of ``target_modules`` in ``config.target_modules`` (their order kept), or ``None`` for all."""
    if target_modules is None or list(target_modules) == list(config.target_modules):
        return None
    unknown = [name for name in target_modules if name not in config.target_modules]
    if unknown or not target_modules:
        raise ConfigError(f"target_modules must be a non-empty subset of the trained {config.target_modules}; "
                          f"not there: {unknown}.")
    return sorted(config.target_modules.index(name) for name in target_modules)


def kept_slot_rows(config: ShineConfig, kept: list[int]) -> torch.Tensor:
    """The memory-slot rows holding the kept modules' LoRA numbers in the "rl" layout. Every module's ``A`` and
    ``B`` must start and end on a slot boundary (``in·r`` and ``r·out`` multiples of the hidden size), otherwise a
    slot holds numbers of two modules and no subset of slots is one module's."""
    hidden, rows = config.hidden_size, []
    for index, (name, a_start, b_start, end) in enumerate(slice_offsets(config.module_specs, config.lora_rank)):
        if index not in kept:
            continue
        if a_start % hidden or b_start % hidden or end % hidden:
            raise ConfigError(f"{name}'s LoRA numbers do not fill whole memory slots (lora_rank "
                              f"{config.lora_rank}, hidden size {hidden}): its slots cannot be kept alone.")
        rows.extend(range(a_start // hidden, end // hidden))
    return torch.tensor(rows)


def source_value(name: str, source: dict[str, torch.Tensor], kept: list[int] | None) -> torch.Tensor | None:
    """The trained tensor a new parameter starts from: per-module tensors from the kept module's index, the gate
    restricted to the kept modules, everything else by name (``None`` where the trained model has no such tensor)."""
    if kept is None:
        return source.get(name)
    prefix, _, index = name.rpartition(".")
    if index.isdigit() and prefix in PER_MODULE_LISTS:
        return source[f"{prefix}.{kept[int(index)]}"]
    if name == "generated_head.gate":
        return source[name][kept]
    return source.get(name)


PER_MODULE_LISTS = ("meta_lora_A", "meta_lora_B", "generated_head.bias_A", "generated_head.bias_B")


@torch.no_grad()
def adapter_difference(first: ShineModel, second: ShineModel, text: str = CHECK_TEXT) -> float | None:
    """The largest absolute difference between the LoRA ``A``/``B`` numbers both hypernetworks generate from
    ``text`` (``None`` when their generated ranks differ and the adapters cannot be compared)."""
    if (first.config.lora_rank, first.config.target_modules) != (second.config.lora_rank,
                                                                  second.config.target_modules):
        return None
    ids = first.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    pairs = zip(first.eval().generate_lora(ids).pairs, second.eval().generate_lora(ids).pairs)
    return max(float((x - y).abs().max()) for (a0, b0), (a1, b1) in pairs for x, y in ((a0, a1), (b0, b1)))


def main(argv: list[str] | None = None) -> int:
    """``python -m peft_shine.training.warm_start SRC DST [--meta-lora-rank R] [--lora-rank R]
    [--target-modules M,M] [--m2p-layers N]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="trained hypernetwork folder")
    parser.add_argument("output", help="folder for the resized hypernetwork")
    parser.add_argument("--meta-lora-rank", type=int, default=None)
    parser.add_argument("--lora-rank", type=int, default=None)
    parser.add_argument("--target-modules", default=None,
                        help="comma-separated subset of the trained target modules (fewer memory slots)")
    parser.add_argument("--m2p-layers", type=int, default=None, help="M2P depth (the first N trained blocks kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", default=None, help="base LM folder or Hub id (default: the one in the config)")
    args = parser.parse_args(argv)
    base = tokenizer = None
    if args.base is not None:
        base, tokenizer = load_base_model(args.base)
    trained = ShineModel.from_pretrained(args.source, base_model=base, tokenizer=tokenizer)
    targets = None if args.target_modules is None else [m.strip() for m in args.target_modules.split(",")]
    model = resize_hypernetwork(trained, args.meta_lora_rank, args.lora_rank, targets, args.m2p_layers,
                                seed=args.seed)
    model.save_pretrained(args.output)
    difference = adapter_difference(trained, model)
    check = ("generated adapters not comparable (another rank or other modules)" if difference is None
             else f"generated adapters differ by at most {difference:.2e}")
    print(f"{args.source} -> {args.output}: meta_lora_rank {trained.config.meta_lora_rank} -> "
          f"{model.config.meta_lora_rank}, lora_rank {trained.config.lora_rank} -> {model.config.lora_rank}, "
          f"M2P layers {trained.config.m2p_num_layers} -> {model.config.m2p_num_layers}, "
          f"memory slots {trained.config.num_memory_slots} -> {model.config.num_memory_slots}; {check}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
