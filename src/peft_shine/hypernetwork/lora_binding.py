"""Applying LoRA weights that are *tensors* (outputs of the hypernetwork), not parameters, to a frozen base LM.

One mechanism serves both SHINE passes: the meta-LoRA while encoding the context (one LoRA shared by the batch)
and the generated LoRA in the answer pass (one LoRA per example). Forward hooks on the base LM's target linear
layers add ``scale · (x @ A) @ B`` (in place, by one fused ``addmm_``, when autograd is off); gradients flow to
``A`` and ``B`` and so to the hypernetwork.

Gradient checkpointing recomputes layers during backward, after the forward that bound the LoRA has returned.
`LoraBinder.checkpoint_context_fn` is passed to `torch.utils.checkpoint` (non-reentrant) as ``context_fn``: it
snapshots which LoRA was bound when a layer ran forward and re-binds exactly that one while the layer is
recomputed, so gradients equal those of a run without checkpointing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from peft_shine.errors import ConfigError


@dataclass
class LoraWeights:
    """LoRA factors for every ``[layer][module]`` of a base LM.

    ``pairs[j] = (A, B)`` for target module ``j`` with ``A`` of shape ``(n, layers, in, r)`` and ``B`` of shape
    ``(n, layers, r, out)``. ``n`` is 1 (one LoRA for every row of the batch) or a divisor of the batch size (rows
    grouped contiguously: row ``i`` uses LoRA ``i // (batch / n)``). The layer output gains
    ``scale · (x @ A) @ B``.
    """

    pairs: list[tuple[torch.Tensor, torch.Tensor]]
    scale: float = 1.0

    @property
    def num_loras(self) -> int:
        return self.pairs[0][0].shape[0]

    def with_others(self, count: int) -> LoraWeights:
        """These LoRAs followed by ``count`` copies rolled by 1..``count`` along the LoRA axis: for a batch repeated
        ``1 + count`` times, block ``n`` scores every row under the LoRA of the ``n``-th context before its own (the
        in-batch negatives of the contrastive term; differentiable). ``count == 0`` returns ``self``."""
        if count == 0:
            return self
        pairs = [tuple(torch.cat([t] + [t.roll(n, 0) for n in range(1, count + 1)]) for t in pair)
                 for pair in self.pairs]
        return LoraWeights(pairs, scale=self.scale)

    def delta(self, layer: int, module: int, x: torch.Tensor) -> torch.Tensor:
        """The LoRA contribution for input ``x (batch, ..., in)`` of one module of one layer, computed on ``x``'s
        device and in its dtype (a base spread over devices by a ``device_map`` gets each layer's factors where
        that layer runs; gradients flow back to the hypernetwork's device)."""
        a, b = self._layer_factors(layer, module, x)
        if a.shape[0] == 1:
            return (x @ a[0]).mul_(self.scale) @ b[0]
        rows = x.reshape(a.shape[0], -1, x.shape[-1])
        return (torch.bmm(rows, a).mul_(self.scale) @ b).reshape(*x.shape[:-1], b.shape[-1])

    def add_delta_(self, layer: int, module: int, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``output + delta(x)`` written into ``output`` by one fused ``addmm_`` / ``baddbmm_`` (no tensor of the
        output's size is allocated): for passes without autograd, where the layer's output is not saved."""
        a, b = self._layer_factors(layer, module, x)
        if a.shape[0] == 1:
            output.view(-1, output.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]) @ a[0], b[0], alpha=self.scale)
        else:
            rows = x.reshape(a.shape[0], -1, x.shape[-1])
            output.view(a.shape[0], -1, output.shape[-1]).baddbmm_(torch.bmm(rows, a), b, alpha=self.scale)
        return output

    def _layer_factors(self, layer: int, module: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` of one module of one layer on ``x``'s device and in its dtype, checked against ``x``'s batch."""
        a, b = self.pairs[module]
        if a.shape[0] > 1 and x.shape[0] % a.shape[0]:
            raise ConfigError(f"A batch of {x.shape[0]} rows cannot be split evenly over {a.shape[0]} LoRAs.")
        return (a[:, layer].to(device=x.device, dtype=x.dtype), b[:, layer].to(device=x.device, dtype=x.dtype))


class LoraBinder:
    """Forward hooks on ``modules[layer][module]`` that add the currently bound `LoraWeights` (per thread)."""

    def __init__(self, modules: list[list[nn.Module]]) -> None:
        self._state = threading.local()
        self._handles = [
            module.register_forward_hook(partial(self._hook, layer_index, module_index))
            for layer_index, layer in enumerate(modules)
            for module_index, module in enumerate(layer)
        ]

    @property
    def active(self) -> LoraWeights | None:
        """The LoRA bound in the calling thread, if any."""
        return getattr(self._state, "lora", None)

    def _hook(self, layer: int, module: int, _mod: nn.Module, inputs: tuple, output: torch.Tensor):
        lora = self.active
        if lora is None:
            return None
        if not torch.is_grad_enabled() and output.is_contiguous() and output.dtype == inputs[0].dtype:
            return lora.add_delta_(layer, module, inputs[0], output)
        return output + lora.delta(layer, module, inputs[0])

    @contextmanager
    def bind(self, lora: LoraWeights | None) -> Iterator[None]:
        """Bind ``lora`` for the duration of the block (``None`` unbinds), restoring the previous binding after."""
        previous = self.active
        self._state.lora = lora
        try:
            yield
        finally:
            self._state.lora = previous

    def checkpoint_context_fn(self):
        """``context_fn`` for non-reentrant `torch.utils.checkpoint`: recompute with the LoRA bound at forward."""
        return nullcontext(), self.bind(self.active)

    def remove(self) -> None:
        """Remove every hook from the base LM."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def capture_layer_outputs(layers: nn.ModuleList, indices: Sequence[int] | None = None,
                          last_positions: int | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Collect the residual stream after the decoder layers ``indices`` (every layer by default).

    Yields a dict that holds, after the forward, ``{index: (batch, length, hidden)}``: the whole output, or a copy
    of its last ``last_positions`` positions (a view would keep the whole layer output alive). The last forward
    inside the block wins. The one capture helper: pass 1's memory states, pass 2's hidden-state term and the
    teacher's hidden targets all use it.
    """
    captured: dict[int, torch.Tensor] = {}

    def hook_for(index: int):
        def hook(_module: nn.Module, _inputs: tuple, output) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            captured[index] = hidden if last_positions is None else hidden[:, -last_positions:].clone()
        return hook

    chosen = range(len(layers)) if indices is None else indices
    handles = [layers[i].register_forward_hook(hook_for(i)) for i in chosen]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def stack_layer_states(states: list[torch.Tensor] | dict[int, torch.Tensor], device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
    """Stack the per-layer ``(batch, slots, hidden)`` captures (a list, or a dict by layer index) into ``(batch,
    layers, slots, hidden)`` on one ``device`` in ``dtype`` (the layers of a base spread by a ``device_map`` leave
    them on different devices)."""
    if isinstance(states, dict):
        states = [states[index] for index in sorted(states)]
    return torch.stack([state.to(device=device, dtype=dtype) for state in states], dim=1)
