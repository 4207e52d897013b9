"""What is added to the generated LoRA before it is used: a learned bias LoRA and a gate.

* **Bias LoRA** (``bias_lora_rank > 0``): per target module and layer, a learned context-independent LoRA
  ``A_b (layers, in, r_b)``, ``B_b (layers, r_b, out)``, added to every generated adapter. The style every adapter
  shares can live there, leaving the generated part for the context. It is concatenated to the generated factors
  along the rank axis (``[A | A_b]``, ``[B ; B_b]``), so an adapter stays one standard LoRA of rank
  ``lora_rank + bias_lora_rank`` and its update is exactly the sum of both. The bias factors are divided by
  ``√lora_scale`` before the concatenation: the LoRA scale ``s`` then cancels and the bias adds ``x @ A_b @ B_b``.
* **Gate** (``generated_gate_init`` not ``None``): one learned scalar per target module multiplying the generated
  ``B``; ``generated_gate_init = 0`` makes a fresh hypernetwork's generated output exactly zero at the start.

Warm starts keep the function: a checkpoint saved without these tensors loads with ``B_b = 0`` and the gate at 1
(`GeneratedLoraHead.preserve_function`), so its adapters are unchanged until training moves them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


PREFIX = "generated_head."  # the state-dict prefix of every tensor of this module


class GeneratedLoraHead(nn.Module):
    """The bias LoRA and the gate of `ShineConfig` (no parameters when both are off)."""

    def __init__(self, module_shapes: list[list[int]], num_layers: int, bias_rank: int = 0,
                 gate_init: float | None = None) -> None:
        super().__init__()
        self.bias_rank = bias_rank
        self.gate_init = gate_init
        self.bias_A = nn.ParameterList(nn.Parameter(torch.empty(num_layers, i, bias_rank))
                                       for i, _ in module_shapes) if bias_rank else nn.ParameterList()
        self.bias_B = nn.ParameterList(nn.Parameter(torch.empty(num_layers, bias_rank, o))
                                       for _, o in module_shapes) if bias_rank else nn.ParameterList()
        self.gate = nn.Parameter(torch.empty(len(module_shapes))) if gate_init is not None else None

    @property
    def enabled(self) -> bool:
        return bool(self.bias_rank) or self.gate is not None

    @torch.no_grad()
    def reset_parameters(self, bias_init_std: float) -> None:
        """Fresh values: ``A_b ~ N(0, bias_init_std²)``, ``B_b = 0`` (the bias adds nothing at first), the gate at
        its configured start."""
        for a, b in zip(self.bias_A, self.bias_B):
            a.normal_(std=bias_init_std)
            b.zero_()
        if self.gate is not None:
            self.gate.fill_(self.gate_init)

    @torch.no_grad()
    def preserve_function(self, missing: list[str]) -> None:
        """Warm start from a checkpoint without some of these tensors (``missing``: their state-dict keys):
        ``B_b = 0`` and the gate at 1 where they were missing, so the hypernetwork's adapters are exactly those of
        the checkpoint (``A_b`` keeps its random start, so ``B_b`` gets gradients)."""
        if any(key.startswith(PREFIX + "bias_B") for key in missing):
            for b in self.bias_B:
                b.zero_()
        if self.gate is not None and PREFIX + "gate" in missing:
            self.gate.fill_(1.0)

    def forward(self, pairs: list[tuple[torch.Tensor, torch.Tensor]],
                scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The generated ``(A (n, layers, in, r), B (n, layers, r, out))`` of every module, gated and joined with
        the bias LoRA (rank ``r + r_b``; see the module docstring). Differentiable; identity when disabled."""
        if not self.enabled:
            return pairs
        result = []
        for index, (a, b) in enumerate(pairs):
            if self.gate is not None:
                b = b * self.gate[index].to(b.dtype)
            if self.bias_rank:
                unscale = 1.0 / math.sqrt(scale)
                bias_a = (self.bias_A[index] * unscale).to(a.dtype)[None].expand(a.shape[0], -1, -1, -1)
                bias_b = (self.bias_B[index] * unscale).to(b.dtype)[None].expand(b.shape[0], -1, -1, -1)
                a, b = torch.cat([a, bias_a], dim=-1), torch.cat([b, bias_b], dim=-2)
            result.append((a, b))
        return result


def new_tensor_prefixes(saved, requested) -> tuple[str, ...]:
    """State-dict prefixes of the head's tensors that ``requested`` (a `ShineConfig`) has and a checkpoint saved
    with config ``saved`` cannot hold (the feature was off there): the only keys a warm start may find missing."""
    prefixes = []
    if not getattr(saved, "bias_lora_rank", 0) and requested.bias_lora_rank:
        prefixes.append(PREFIX + "bias_")
    if getattr(saved, "generated_gate_init", None) is None and requested.generated_gate_init is not None:
        prefixes.append(PREFIX + "gate")
    return tuple(prefixes)
