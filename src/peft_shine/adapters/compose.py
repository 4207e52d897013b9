"""Combining adapters already loaded on a `PeftModel` (several documents' adapters → one) with the rules of
`peft_shine.adapters.combine`, through peft's own ``add_weighted_adapter``.

``"cat"`` and ``"mean"`` use peft's ``"cat"`` combination (exact: rank concatenation; ``"mean"`` passes the weights
divided by their sum), ``"svd"`` uses peft's ``"svd"`` with ``svd_rank`` (the best rank-k approximation of the
full update); the truncation error is reported from `composition.combine_lora_states`' QR-core SVD.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import PeftType, get_peft_model_state_dict

from peft_shine.adapters.combine import CombinedLora, check_rule, combine_lora_states, normalized_weights
from peft_shine.errors import CompositionError


def compose_adapters(
    peft_model,
    adapter_names: Sequence[str],
    new_name: str,
    rule: str = "cat",
    *,
    weights: Sequence[float] | None = None,
    rank: int | None = None,
    activate: bool = True,
) -> CombinedLora:
    """Combine LoRA adapters loaded on ``peft_model`` (e.g. generated from several documents) into a new adapter
    ``new_name`` on the same model, with the rules of this module, through peft's ``add_weighted_adapter``.

    ``"cat"`` and ``"mean"`` use peft's ``"cat"`` combination (exact; ``"mean"`` passes the weights divided by their
    sum), ``"svd"`` uses peft's ``"svd"`` with ``svd_rank=rank`` (the best rank-``rank`` approximation, computed by
    peft from the full ``out × in`` update). The result saves with ``save_pretrained`` / `ShineModel.save_adapter`
    like any generated adapter. With ``activate`` the new adapter becomes the active one.

    Returns:
        A `CombinedLora` holding the new adapter's state dict, its rank and, for ``"svd"``, the relative
        truncation error of each module. Raises `CompositionError` before changing anything when the names, the
        adapters' configs, the weights or the rank budget do not allow the combination; if peft fails midway, the
        half-made adapter is removed.
    """
    names = _check_composable(peft_model, adapter_names, new_name)
    configs = [peft_model.peft_config[name] for name in names]
    check_rule(rule, rank, sum(config.r for config in configs))
    values = normalized_weights(rule, len(names), weights)
    states = [get_peft_model_state_dict(peft_model, adapter_name=name) for name in names]
    errors = {}
    if rule == "svd":  # the truncation error from the cheap QR-core SVD (peft keeps only the truncated factors)
        errors = combine_lora_states(states, "svd", weights=values, rank=rank,
                                     scalings=[c.lora_alpha / c.r for c in configs]).errors
    try:
        peft_model.add_weighted_adapter(list(names), values, new_name,
                                        combination_type="svd" if rule == "svd" else "cat",
                                        svd_rank=rank, svd_full_matrices=False)
    except BaseException:
        if new_name in peft_model.peft_config:
            peft_model.delete_adapter(new_name)
        raise
    if activate:
        peft_model.set_adapter(new_name)
    state = get_peft_model_state_dict(peft_model, adapter_name=new_name)
    return CombinedLora(state, peft_model.peft_config[new_name].r, rule, errors)


def _check_composable(peft_model, adapter_names: Sequence[str], new_name: str) -> list[str]:
    """The adapter names, checked: at least two distinct existing plain LoRA adapters with the same targets, and
    a new name that is not taken (peft's ``add_weighted_adapter`` would silently keep an existing one)."""
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    if len(names) < 2 or len(set(names)) != len(names):
        raise CompositionError(f"Composition needs at least two distinct adapter names, got {names}.")
    missing = [name for name in names if name not in peft_model.peft_config]
    if missing:
        raise CompositionError(f"No adapter named {missing}; loaded: {list(peft_model.peft_config)}.")
    if not isinstance(new_name, str) or not new_name or new_name in peft_model.peft_config:
        raise CompositionError(f"The new adapter needs a name not already loaded, got {new_name!r}; delete the old "
                               f"one first (peft_model.delete_adapter(name)).")
    configs = [peft_model.peft_config[name] for name in names]
    for name, config in zip(names, configs):
        if config.peft_type != PeftType.LORA or config.use_dora or config.rank_pattern or config.alpha_pattern \
                or getattr(config, "lora_bias", False):
            raise CompositionError(f"Adapter {name!r} is not a plain LoRA (DoRA, bias, or per-module rank/alpha "
                                   f"patterns); only plain LoRA adapters can be combined.")
    targets = {frozenset(config.target_modules) if not isinstance(config.target_modules, str)
               else config.target_modules for config in configs}
    if len(targets) != 1:
        raise CompositionError("The adapters target different modules; only adapters of the same targets combine.")
    return names
