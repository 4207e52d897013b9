"""Generated adapters on the base's one shared `PeftModel`: added in time linear in their number, and switched off
while a hypernetwork reads the base.

peft adds an adapter by walking every module of the model (its earlier adapters included), reloading the whole state
dict and re-flagging every adapter's parameters, so adding ``N`` adapters one by one costs ``O(N²)``. Here the first
adapter on a base goes through peft (`get_peft_model`); every later one is put straight into the LoRA layers peft
created, filling exactly the per-adapter entries peft filled for the first (checked: if a peft version keeps other
entries, this falls back to peft's own, slower path). The result is the same `PeftModel` state, tested against peft.

Several `ShineModel`s may share one base object: they share its `PeftModel` (one adapter namespace per base), and
`all_adapters_disabled` switches off every peft tuner layer in the base, whoever attached it, while encoding. Each
model owns the adapters it generated: the base records the owner of every generated name and a fingerprint of its
weights (`claim_names`, `record_owner`), so a second model refuses a name the first holds, and a model saves,
deletes and describes only its own adapters (and those no model generated, e.g. composed ones), whose weights must
still be the ones it generated (`check_owned`).

Deleting adapters removes their entries from every LoRA layer in one pass (`discard_adapters`): linear in their
number, where peft's ``delete_adapter`` walks every module and every remaining adapter per name.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
import weakref
from collections.abc import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from peft_shine.errors import AdapterNotFoundError, AdapterSaveError, AdapterStateError


GENERATION_LOCK = threading.RLock()  # serialises adapter generation and deletion on shared bases, across threads
_SHARED_ATTRIBUTE = "_peft_shine_peft_model"  # a weak reference on the base object to its PeftModel
_OWNERS_ATTRIBUTE = "_peft_shine_adapter_owners"  # on the base: adapter name -> (weak ref to its model, fingerprint)


def modules_outside_tuners(model: nn.Module) -> list[nn.Module]:
    """``model`` and its submodules, the peft tuner layers included but nothing inside them (so the cost does not
    grow with the number of adapters they hold)."""
    found, stack = [], [model]
    while stack:
        module = stack.pop()
        found.append(module)
        if not isinstance(module, BaseTunerLayer):
            stack.extend(child for child in module._modules.values() if child is not None)
    return found


def tuner_layers(model: nn.Module) -> list[BaseTunerLayer]:
    """Every peft tuner layer in ``model``, found without walking into them."""
    return [module for module in modules_outside_tuners(model) if isinstance(module, BaseTunerLayer)]


def set_eval_mode(model: nn.Module) -> None:
    """``model.eval()``, skipped when no module outside the tuner layers, nor a tuner layer itself, is training: what
    lies inside a tuner layer (the adapters' factors) is put in eval mode when it is added, and a ``train()`` call
    reaching it would have reached its tuner layer too. ``model.eval()`` walks every adapter's modules."""
    if any(module.training for module in modules_outside_tuners(model)):
        model.eval()


def activate_adapter(peft_model: PeftModel, name: str) -> None:
    """``peft_model.set_adapter(name)``, skipped when ``name`` is already the active adapter of every tuner layer
    (peft's call walks every module and every adapter's parameters to re-set the ``requires_grad`` flags it set
    the last time; adapters added since by `add_adapters` are frozen already, as peft would leave them)."""
    layers = tuner_layers(peft_model)
    if peft_model.active_adapter == name and all(layer.active_adapters == [name] for layer in layers):
        return
    peft_model.set_adapter(name)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then every module that was training trains again. Only the modules outside peft's
    tuner layers are visited (what is inside them is switched off while encoding), so the cost does not grow with
    the number of adapters on the base, unlike ``model.eval()`` / ``model.train()``."""
    training = [module for module in modules_outside_tuners(model) if module.training]
    for module in training:
        module.training = False
    try:
        yield
    finally:
        for module in training:
            module.training = True


@contextlib.contextmanager
def all_adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Switch off every peft adapter in ``model`` for the block, whichever `PeftModel` attached it."""
    layers = tuner_layers(model)
    merged = [layer for layer in layers if getattr(layer, "merged", False)]
    if merged:
        raise AdapterStateError("Adapters are merged into the base model's weights, so the plain base cannot be "
                                "run; call unmerge_adapter() on that PeftModel before generating adapters.")
    previous = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer._disable_adapters = value


def shared_peft_model(base_lm: nn.Module) -> PeftModel | None:
    """The `PeftModel` another `ShineModel` created over this very base object, if it is still alive."""
    reference = getattr(base_lm, _SHARED_ATTRIBUTE, None)
    return reference() if reference is not None else None


def add_adapters(base_lm: nn.Module, peft_model: PeftModel | None, config: LoraConfig,
                 states: dict[str, dict[str, torch.Tensor]]) -> PeftModel:
    """Load each ``name → peft state dict`` as a LoRA adapter on ``base_lm`` (in place, never a copy).

    Creates the base's `PeftModel` on first use (or reuses the one another `ShineModel` made on the same base); an
    existing adapter of the same name gets the new weights in place. The last adapter becomes the active one.
    """
    peft_model = peft_model or shared_peft_model(base_lm)
    created_by_peft = False  # peft creates its modules in training mode: then the whole model goes to eval
    for name, state in states.items():
        if peft_model is not None and name in peft_model.peft_config and peft_model.peft_config[name].r != config.r:
            with warnings.catch_warnings():  # another rank (a chunked adapter): replaced, not copied into
                warnings.simplefilter("ignore")
                peft_model.delete_adapter(name)
        if peft_model is None:
            peft_model = wrap_base(base_lm, config, name, low_cpu_mem_usage=True)  # weights loaded next
            object.__setattr__(base_lm, _SHARED_ATTRIBUTE, weakref.ref(peft_model))
            _load_through_peft(peft_model, name, state)
            created_by_peft = True
        elif name in peft_model.peft_config or not _add_directly(peft_model, name, config, state):
            if name not in peft_model.peft_config:
                peft_model.add_adapter(name, config, low_cpu_mem_usage=True)
                created_by_peft = True
            _load_through_peft(peft_model, name, state)
        if config.base_model_name_or_path:  # peft copies the base's `name_or_path`, unset on models built in code
            peft_model.peft_config[name].base_model_name_or_path = config.base_model_name_or_path
    activate_adapter(peft_model, list(states)[-1])
    if created_by_peft:
        peft_model.eval()
    else:
        set_eval_mode(peft_model)  # adapters added directly or copied into are in eval mode already
    return peft_model


def _load_through_peft(peft_model: PeftModel, name: str, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into adapter ``name``: straight into its existing tensors when they are materialised (cheap),
    else with peft's loader (a new adapter's meta tensors)."""
    layers = _lora_layers(peft_model, state)
    if all(name in layer.lora_A and layer.lora_A[name].weight.device.type != "meta" for layer in layers.values()):
        with torch.no_grad():
            for prefix, layer in layers.items():
                layer.lora_A[name].weight.copy_(state[f"{prefix}.lora_A.weight"])
                layer.lora_B[name].weight.copy_(state[f"{prefix}.lora_B.weight"])
        return
    result = set_peft_model_state_dict(peft_model, state, adapter_name=name, low_cpu_mem_usage=True)
    unexpected = [key for key in result.unexpected_keys if "lora_" in key]
    if unexpected:
        raise AdapterStateError(f"Adapter {name!r}'s keys did not match the model's LoRA layers (is an adapter of "
                                f"that name with other target modules loaded? delete it first): {unexpected[:4]} ...")


def _lora_layers(peft_model: PeftModel, state: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    """Checkpoint prefix (``base_model.model.<path>``) → the peft LoRA layer, for every module in ``state``."""
    prefixes = dict.fromkeys(key.rsplit(".lora_", 1)[0] for key in state)
    try:
        return {prefix: peft_model.get_submodule(prefix) for prefix in prefixes}
    except AttributeError as error:
        raise AdapterStateError(f"Generated adapter keys did not match the base model: {error}") from error


def _adapter_entries(layer: nn.Module, name: str) -> set[str]:
    """The attributes of a LoRA layer (dicts and module dicts) that hold an entry for adapter ``name``."""
    return {attr for attr, value in vars(layer).items() if isinstance(value, dict) and name in value} | \
        {attr for attr, value in layer._modules.items() if isinstance(value, nn.ModuleDict) and name in value}


def _add_directly(peft_model: PeftModel, name: str, config: LoraConfig, state: dict[str, torch.Tensor]) -> bool:
    """Add adapter ``name`` by filling the LoRA layers' entries the way peft filled them for an earlier adapter
    (no dropout, no bias, no DoRA, no rsLoRA: the generated adapters' config). Returns False, changing nothing,
    when the layers do not look as expected; the caller then uses peft's own path."""
    if config.lora_dropout or config.use_dora or config.use_rslora or config.lora_bias or not peft_model.peft_config:
        return False
    layers = _lora_layers(peft_model, state)
    reference = next(iter(peft_model.peft_config))
    first = next(iter(layers.values()))
    expected = _adapter_entries(first, reference)
    if expected != {"r", "lora_alpha", "scaling", "lora_bias", "use_rslora", "use_dora", "lora_dropout",
                    "lora_A", "lora_B"} or any(reference not in layer.lora_A for layer in layers.values()):
        return False
    with torch.no_grad():
        for prefix, layer in layers.items():
            like = layer.lora_A[reference].weight
            a, b = (state[f"{prefix}.lora_{f}.weight"].to(like.device, like.dtype) for f in ("A", "B"))
            layer.r[name], layer.lora_alpha[name] = config.r, config.lora_alpha
            layer.scaling[name] = config.lora_alpha / config.r
            layer.lora_bias[name], layer.use_rslora[name], layer.use_dora[name] = False, False, False
            layer.lora_dropout[name] = nn.Identity().eval()
            layer.lora_A[name] = _frozen_linear(a)
            layer.lora_B[name] = _frozen_linear(b)
    peft_model.peft_config[name] = copy.copy(config)
    return True


def _frozen_linear(weight: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` without bias holding ``weight`` (``out × in``), with no initialisation work and no grad."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    return linear.eval()


def discard_adapters(base_lm: nn.Module, peft_model: PeftModel | None, names: list[str], *,
                     like_peft: bool = False) -> PeftModel | None:
    """Remove every trace of the named adapters, whole or half-added (an add that failed midway): their configs and
    every per-adapter entry of every LoRA layer in the base, in one pass. The active adapters that remain stay
    active, else the last one added (``like_peft``: the first name in sorted order, what peft's ``delete_adapter``
    picks); when none is left the base is unwrapped and ``None`` returned."""
    peft_model = peft_model or shared_peft_model(base_lm)
    if peft_model is None:
        return None
    layers, owners = tuner_layers(base_lm), base_lm.__dict__.get(_OWNERS_ATTRIBUTE, {})
    for name in names:
        peft_model.peft_config.pop(name, None)
        owners.pop(name, None)
        for layer in layers:
            for attr in _adapter_entries(layer, name):
                del getattr(layer, attr)[name]
    remaining = list(peft_model.peft_config)
    if not remaining:
        peft_model.unload()
        forget_shared(base_lm)
        return None
    active = [name for name in peft_model.active_adapters if name in remaining] or \
        (sorted(remaining)[:1] if like_peft else remaining[-1:])
    if len(active) == 1:
        peft_model.set_adapter(active[0])  # PeftModel.set_adapter takes one name, never a list
    else:  # several stay active together: the LoRA model takes the list
        peft_model.base_model.set_adapter(active)
    return peft_model


def forget_shared(base_lm: nn.Module) -> None:
    """Drop the base's reference to its shared `PeftModel` (after the last adapter is deleted or it was unloaded)
    and the owners of its adapters."""
    for attribute in (_SHARED_ATTRIBUTE, _OWNERS_ATTRIBUTE):
        if attribute in base_lm.__dict__:
            object.__delattr__(base_lm, attribute)


def delete_adapters(base_lm: nn.Module, peft_model: PeftModel | None, names: list[str]) -> PeftModel | None:
    """Delete the named adapters (unknown names are skipped) in one pass over the LoRA layers; when none is left,
    unwrap the base (plain again) and return ``None``."""
    if peft_model is None:
        return None
    present = [name for name in dict.fromkeys(names) if name in peft_model.peft_config]
    return discard_adapters(base_lm, peft_model, present, like_peft=True) if present else peft_model


def _owners(base_lm: nn.Module) -> dict[str, tuple[weakref.ref, torch.Tensor]]:
    owners = base_lm.__dict__.get(_OWNERS_ATTRIBUTE)
    if owners is None:
        owners = {}
        object.__setattr__(base_lm, _OWNERS_ATTRIBUTE, owners)
    return owners


def owner_of(base_lm: nn.Module, name: str) -> nn.Module | None:
    """The live `ShineModel` that generated adapter ``name`` on this base, if any."""
    entry = base_lm.__dict__.get(_OWNERS_ATTRIBUTE, {}).get(name)
    return entry[0]() if entry is not None else None


def owned_names(base_lm: nn.Module, owner: nn.Module) -> list[str]:
    """The adapters on this base that ``owner`` generated, in the order they were added."""
    return [name for name, (ref, _) in base_lm.__dict__.get(_OWNERS_ATTRIBUTE, {}).items() if ref() is owner]


def claim_names(base_lm: nn.Module, owner: nn.Module, names: list[str]) -> None:
    """Raise `AdapterStateError` when another live `ShineModel` on the same base holds one of ``names``."""
    taken = [name for name in names if owner_of(base_lm, name) not in (None, owner)]
    if taken:
        raise AdapterStateError(
            f"Adapter name(s) {', '.join(repr(name) for name in taken)} belong to another ShineModel on the same base "
            f"model: generating here would replace its weights. Pass other adapter_names=..., or delete them with "
            f"that model's delete_adapters first."
        )


def fingerprint(layers: list[BaseTunerLayer], name: str) -> torch.Tensor:
    """A cheap summary of adapter ``name``'s LoRA factors (shape and sum of each), to notice replaced weights."""
    values = [(float(factor[name].weight.shape[0]), factor[name].weight.detach().double().sum())
              for layer in layers for factor in (layer.lora_A, layer.lora_B) if name in factor]
    return torch.tensor([[rows, float(total)] for rows, total in values], dtype=torch.float64)


def record_owner(base_lm: nn.Module, owner: nn.Module, names: list[str]) -> None:
    """Record ``owner`` as the model that generated ``names`` and the fingerprint of their weights."""
    layers, owners = tuner_layers(base_lm), _owners(base_lm)
    for name in names:
        owners.pop(name, None)  # re-inserted last: `owned_names` keeps the order of generation
        owners[name] = (weakref.ref(owner), fingerprint(layers, name))


def visible_names(base_lm: nn.Module, owner: nn.Module, names: list[str]) -> list[str]:
    """``names`` without those another live `ShineModel` generated (an adapter nobody generated, such as one made
    by `compose_adapters` or loaded through peft, is visible to every model)."""
    return [name for name in names if owner_of(base_lm, name) in (None, owner)]


def check_owned(base_lm: nn.Module, peft_model: PeftModel | None, owner: nn.Module, name: str) -> None:
    """Raise `AdapterNotFoundError` unless adapter ``name`` is on the base and not another model's, `AdapterSaveError` when
    ``owner`` generated it and its weights changed since (replaced through peft, or by hand)."""
    loaded = list(peft_model.peft_config) if peft_model is not None else []
    if name not in loaded or owner_of(base_lm, name) not in (None, owner):
        whose = " (it belongs to another ShineModel on the same base)" if name in loaded else ""
        raise AdapterNotFoundError(f"No generated adapter named {name!r} on this model{whose}; available: "
                                   f"{visible_names(base_lm, owner, loaded)}.")
    entry = base_lm.__dict__.get(_OWNERS_ATTRIBUTE, {}).get(name)
    if entry is None:
        return
    current = fingerprint(tuner_layers(base_lm), name)
    if current.shape != entry[1].shape or not torch.equal(current, entry[1]):
        raise AdapterSaveError(
            f"Adapter {name!r} no longer holds the weights this model generated (changed since, through peft or by "
            f"hand); nothing was saved. Generate it again, or save the changed adapter with peft's "
            f"peft_model.save_pretrained."
        )


def wrap_base(base_lm: nn.Module, config: LoraConfig, adapter_name: str, *, low_cpu_mem_usage: bool = False,
              ) -> PeftModel:
    """`get_peft_model` on the base, without the deprecation warning peft triggers by reading the base's
    ``is_gradient_checkpointing`` (renamed in transformers 5.24): our call, so not the user's noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(base_lm, config, adapter_name=adapter_name, low_cpu_mem_usage=low_cpu_mem_usage)
