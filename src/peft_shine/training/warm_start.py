"""Warm starts across weight shapes: a trained hypernetwork resized to another meta-LoRA or generated LoRA rank.

Changing ``meta_lora_rank`` or ``lora_rank`` changes weight shapes, so such a hypernetwork cannot load a trained
checkpoint as is. `widen_hypernetwork` builds the resized model from the trained one:

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

Command line: ``python -m peft_shine.training.warm_start SRC DST --meta-lora-rank 32`` (or ``--lora-rank 6``) writes the
resized hypernetwork to ``DST``; ``shine train --init-from DST`` then continues from it.
"""

from __future__ import annotations

import argparse
import math

import torch

from peft_shine.errors import ConfigError
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.modeling_shine import ShineModel
from peft_shine.storage.base_models import load_base_model


CHECK_TEXT = "The Normans gave their name to Normandy, a region in France, in the 10th and 11th centuries."


def widen_hypernetwork(trained: ShineModel, meta_lora_rank: int | None = None, lora_rank: int | None = None,
                       seed: int = 0) -> ShineModel:
    """A copy of ``trained`` (base LM attached) with a larger ``meta_lora_rank`` and/or another ``lora_rank``,
    initialised from its weights as described in the module docstring. The new model shares the base LM."""
    old = trained.config
    meta_rank = old.meta_lora_rank if meta_lora_rank is None else meta_lora_rank
    rank = old.lora_rank if lora_rank is None else lora_rank
    if meta_rank < old.meta_lora_rank:
        raise ConfigError(f"meta_lora_rank can only grow ({old.meta_lora_rank} -> {meta_rank}).")
    values = old.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "num_memory_slots"):
        values.pop(key, None)
    config = ShineConfig(**{**values, "meta_lora_rank": meta_rank, "lora_rank": rank})
    torch.manual_seed(seed)
    model = ShineModel(config).attach_base_model(trained.base_lm, trained.tokenizer)
    model.init_memory_from_embeddings(seed)  # the fresh-model rule, kept for the new slots only
    source = dict(trained.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("base_lm.") or name not in source:
                continue
            value = source[name]
            if name.startswith("meta_lora_A."):  # (layers, in, r): trained columns first, fresh columns after
                fresh = torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)) \
                    * math.sqrt(config.meta_lora_init_scale)
                param.copy_(fresh.to(param))
                param[..., : value.shape[-1]] = value
            elif name.startswith("meta_lora_B."):  # (layers, r, out): trained rows first, zero rows after
                param.zero_()
                param[:, : value.shape[1]] = value
            elif name in ("memory_slots", "m2p.slot_embedding"):  # old slots first (they keep their states)
                count = min(value.shape[0], param.shape[0])
                param[:count] = value[:count]
            else:
                param.copy_(value)
    return model.eval()


@torch.no_grad()
def adapter_difference(first: ShineModel, second: ShineModel, text: str = CHECK_TEXT) -> float | None:
    """The largest absolute difference between the LoRA ``A``/``B`` numbers both hypernetworks generate from
    ``text`` (``None`` when their generated ranks differ and the adapters cannot be compared)."""
    if first.config.lora_rank != second.config.lora_rank:
        return None
    ids = first.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    pairs = zip(first.eval().generate_lora(ids).pairs, second.eval().generate_lora(ids).pairs)
    return max(float((x - y).abs().max()) for (a0, b0), (a1, b1) in pairs for x, y in ((a0, a1), (b0, b1)))


def main(argv: list[str] | None = None) -> int:
    """``python -m peft_shine.training.warm_start SRC DST [--meta-lora-rank R] [--lora-rank R]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="trained hypernetwork folder")
    parser.add_argument("output", help="folder for the resized hypernetwork")
    parser.add_argument("--meta-lora-rank", type=int, default=None)
    parser.add_argument("--lora-rank", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", default=None, help="base LM folder or Hub id (default: the one in the config)")
    args = parser.parse_args(argv)
    base = tokenizer = None
    if args.base is not None:
        base, tokenizer = load_base_model(args.base)
    trained = ShineModel.from_pretrained(args.source, base_model=base, tokenizer=tokenizer)
    model = widen_hypernetwork(trained, args.meta_lora_rank, args.lora_rank, seed=args.seed)
    model.save_pretrained(args.output)
    difference = adapter_difference(trained, model)
    check = ("generated adapters not comparable (another rank)" if difference is None
             else f"generated adapters differ by at most {difference:.2e}")
    print(f"{args.source} -> {args.output}: meta_lora_rank {trained.config.meta_lora_rank} -> "
          f"{model.config.meta_lora_rank}, lora_rank {trained.config.lora_rank} -> {model.config.lora_rank}, "
          f"memory slots {trained.config.num_memory_slots} -> {model.config.num_memory_slots}; {check}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
