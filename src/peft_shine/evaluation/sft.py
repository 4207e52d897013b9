"""The SFT baseline: a per-context LoRA trained by gradient descent, with plain peft, on the shared base LM.

The adapter has the rank and target modules of the hypernetwork's generated LoRA (peft's standard init: ``B = 0``,
so it starts as a no-op; ``lora_alpha = r``). It is trained for a fixed number of AdamW steps (linear decay, no
warm-up, as SHINE's ``sft_lora`` baseline) on **reconstructing the context**, in the chat format SHINE's stage-1
reconstruction uses (`peft_shine.training.data`): user ``"Repeat the text."``, assistant = the context, loss on the
assistant tokens and the end-of-turn token. Its questions are then asked exactly like the ``adapter`` condition's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel

from peft_shine.adapters.store import wrap_base
from peft_shine.errors import ConfigError
from peft_shine.training.data import RECONSTRUCTION_INSTRUCTION, conversation_turns


@dataclass(frozen=True)
class SFTConfig:
    """Training of the SFT baseline adapter (one per context)."""

    steps: int = 20
    learning_rate: float = 2e-3
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if self.steps < 1 or self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError(f"SFT needs steps >= 1, learning_rate > 0 and weight_decay >= 0, got {self}")


def reconstruction_batch(tokenizer, context: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of one reconstruction exchange about ``context`` (labels -100 outside the answer)."""
    messages = [{"role": "user", "content": RECONSTRUCTION_INSTRUCTION}, {"role": "assistant", "content": context}]
    (ids, labels), = conversation_turns(tokenizer, messages)
    return torch.tensor([ids]), torch.tensor([labels])


def sft_lora_config(shine) -> LoraConfig:
    """A trainable `LoraConfig` with the generated adapters' rank and targets (standard init, ``B = 0``)."""
    return dataclasses.replace(shine.adapter_lora_config(), init_lora_weights=True)


def _add_trainable_adapter(shine, name: str, config: LoraConfig) -> PeftModel:
    """Add adapter ``name`` to the shared `PeftModel` (creating it on the same base instance if there is none)."""
    if shine.peft_model is None:
        shine.peft_model = wrap_base(shine.base_lm, config, name)
    else:
        shine.peft_model.add_adapter(name, config)
    shine.peft_model.set_adapter(name)
    return shine.peft_model


def train_sft_adapter(shine, context: str, adapter_name: str, config: SFTConfig | None = None,
                      seed: int = 0) -> float:
    """Train a fresh LoRA named ``adapter_name`` on reconstructing ``context`` and leave it, frozen and in eval
    mode, on ``shine.peft_model`` (the caller deletes it). Returns the wall-clock seconds (adapter creation,
    tokenization and training: the cost that SHINE's one forward pass replaces)."""
    config = config or SFTConfig()
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = _add_trainable_adapter(shine, adapter_name, sft_lora_config(shine))
    params = [p for n, p in model.named_parameters() if f".{adapter_name}." in n]
    device = next(shine.base_lm.parameters()).device
    input_ids, labels = (t.to(device) for t in reconstruction_batch(shine.tokenizer, context))
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / config.steps)
    model.train()
    try:
        with torch.enable_grad():
            for param in params:
                param.requires_grad_(True)
            for _ in range(config.steps):
                model(input_ids=input_ids, labels=labels, use_cache=False).loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
    finally:
        for param in params:
            param.requires_grad_(False)
        model.eval()
    return time.perf_counter() - started
