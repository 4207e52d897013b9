"""`ShineTrainer`'s checks of non-finite numbers around the optimizer step.

* `nonfinite_flag`: whether gradients (or weights) hold NaN/Inf on any rank, as a device tensor (no host sync);
  the trainer's pre-step hook skips a step with non-finite gradients on it.
* `NonFiniteWeightsGuard`: a step whose *finite* gradients still leave NaN/Inf in the weights (an overflowing
  update, e.g. a learning rate far too high) is flagged by a post-step hook on the device; the flag is read when
  logging and before a checkpoint is saved, and training then stops with `NonFiniteWeightsError` naming the first
  such tensor, before a diverged checkpoint replaces a good one.
"""

from __future__ import annotations

from typing import Any

import torch

from peft_shine.errors import NonFiniteWeightsError


def nonfinite_flag(grads: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor on the gradients' device: whether their total norm is NaN/Inf on **any** rank (a max
    all-reduce when `torch.distributed` is initialised with several ranks; no host sync)."""
    bad = (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).to(torch.float32)
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bad > 0


class NonFiniteWeightsGuard:
    """Mixin of `ShineTrainer` (before `Trainer` in its bases): register `_flag_nonfinite_weights` as an optimizer
    post-step hook and call `check_weights_finite` when logging."""

    _nonfinite_weights_step: torch.Tensor | None = None  # the first step that left NaN/Inf weights (0: none)

    def _flag_nonfinite_weights(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Optimizer post-step hook: remember, on the device (no host sync), the first step that left NaN/Inf in
        the weights (`check_weights_finite` reads it)."""
        params = [p.detach() for group in optimizer.param_groups for p in group["params"]]
        if not params:
            return
        bad, step = nonfinite_flag(params), self.state.global_step + 1
        first = self._nonfinite_weights_step
        self._nonfinite_weights_step = torch.where(bad, step, 0) if first is None else \
            torch.where((first == 0) & bad, step, first)

    def check_weights_finite(self) -> None:
        """Raise `NonFiniteWeightsError` naming the first NaN/Inf tensor once an optimizer step left one."""
        step = int(self._nonfinite_weights_step) if self._nonfinite_weights_step is not None else 0
        if not step:
            return
        shine = self.accelerator.unwrap_model(self.model)
        name = next((n for n, p in shine.named_parameters() if not torch.isfinite(p.detach()).all()), "a weight")
        raise NonFiniteWeightsError(
            f"The optimizer step {step} left NaN/Inf in the hypernetwork's weights ({name}) although its gradients "
            f"were finite: the update overflowed, usually a learning rate far too high. Training stopped and no "
            f"checkpoint of those weights was saved; resume from the last checkpoint with a lower learning rate."
        )

    def _save_checkpoint(self, model, trial) -> None:
        self.check_weights_finite()  # before the checkpoint folder is made
        super()._save_checkpoint(model, trial)
