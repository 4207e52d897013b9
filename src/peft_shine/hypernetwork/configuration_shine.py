"""`ShineConfig`: everything needed to build, validate and slice a SHINE hypernetwork without its base LM."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from peft_shine.errors import ConfigError
from peft_shine.hypernetwork.config_bounds import check_bounds
from peft_shine.hypernetwork.layout import ModuleSpec, discover_modules
from peft_shine.hypernetwork.layout import num_memory_slots as required_memory_slots
from peft_shine.storage.base_models import resolve_base_model_path


class ShineConfig(PretrainedConfig):
    r"""Configuration of a SHINE hypernetwork for one base causal LM.

    Build it with [`ShineConfig.from_base_model`], which reads the base model's layout; the constructor takes the
    recorded values back from `config.json`.

    Args:
        base_model_name_or_path (`str`): Hub id (preferred, portable) or path of the frozen base LM.
        base_model_revision (`str`, *optional*): revision (branch, tag or commit) of the base LM.
        base_model_type (`str`): `model_type` of the base LM (e.g. `"llama"`).
        hidden_size (`int`): hidden size `H` of the base LM (also the M2P width).
        num_base_layers (`int`): number of decoder layers `L` of the base LM.
        base_vocab_size (`int`): vocabulary size of the base LM (part of the fingerprint).
        target_modules (`list[str]`): module paths inside a decoder layer, adapted in this order.
        module_shapes (`list[list[int]]`): `[in_features, out_features]` of each target module.
        lora_rank (`int`, defaults to 4): rank `r` of the generated LoRA.
        lora_scale (`float`, defaults to 1e-3): output scale `s`; the adapter's ΔWᵀ is `s · A_raw · B_raw`.
        meta_lora_rank (`int`, defaults to 8): rank of the trainable meta-LoRA used while encoding the context.
        meta_lora_init_scale (`float`, defaults to 1e-3): meta-LoRA `A ~ N(0, 1)·sqrt(scale)`, `B = 0`.
        num_memory_slots (`int`, *optional*): `M`; derived as `ceil(D·r/H)` with `D = Σ(in + out)`.
        train_memory_slots (`bool`, defaults to `True`): whether the memory slot embeddings are trained.
        m2p_num_layers (`int`, defaults to 2): M2P layers, alternating layer-axis and token-axis attention.
        m2p_num_heads (`int`, *optional*): attention heads of the M2P (default `H/64`).
        m2p_ffn_dim (`int`, *optional*): feed-forward width of the M2P (default `2H`).
        m2p_input_norm (`bool`, defaults to `True`): parameter-free LayerNorm of the memory grid before the M2P
            (base LMs such as SmolLM2 have residual streams of magnitude ~1e4 at the memory slots).
        max_context_length (`int`, defaults to 1024): longest context, in tokens, the hypernetwork accepts.
        max_conversation_length (`int`, defaults to 512): longest answer-pass conversation used in training.
        base_fingerprint (`str`): hash of the base LM's shapes; a mismatch on attach raises an error.
        bias_lora_rank (`int`, defaults to 0): rank of a learned, context-independent bias LoRA added to every
            generated adapter (the universal part goes there; exported with the generated one as one LoRA of rank
            `lora_rank + bias_lora_rank`, exact). 0: none.
        generated_gate_init (`float`, optional): a learned gate per target module multiplying the generated LoRA,
            starting at this value (0: the generated part starts at exactly zero). `None`: no gate.
    """

    model_type = "shine"

    def __init__(
        self,
        base_model_name_or_path: str | None = None,
        base_model_revision: str | None = None,
        base_model_type: str | None = None,
        hidden_size: int = 64,
        num_base_layers: int = 2,
        base_vocab_size: int | None = None,
        target_modules: list[str] | None = None,
        module_shapes: list[list[int]] | None = None,
        lora_rank: int = 4,
        lora_scale: float = 1e-3,
        meta_lora_rank: int = 8,
        meta_lora_init_scale: float = 1e-3,
        num_memory_slots: int | None = None,
        train_memory_slots: bool = True,
        m2p_num_layers: int = 2,
        m2p_num_heads: int | None = None,
        m2p_ffn_dim: int | None = None,
        m2p_input_norm: bool = True,
        max_context_length: int = 1024,
        max_conversation_length: int = 512,
        base_fingerprint: str | None = None,
        bias_lora_rank: int = 0,
        generated_gate_init: float | None = None,
        **kwargs: Any,
    ) -> None:
        fields = {name: value for name, value in locals().items() if name not in ("self", "kwargs", "__class__")}
        check_bounds(fields)
        for name, value in fields.items():  # every field is a plain attribute, as in any transformers config
            setattr(self, name, value)
        self.target_modules = list(target_modules or [])
        self.module_shapes = [list(shape) for shape in (module_shapes or [])]
        self._derive_defaults()
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self.validate_layout()

    def _derive_defaults(self) -> None:
        """Fill the fields left ``None`` from the others: M2P heads and width, memory slots, base fingerprint."""
        self.m2p_num_heads = self.m2p_num_heads or default_num_heads(self.hidden_size)
        self.m2p_ffn_dim = self.m2p_ffn_dim or 2 * self.hidden_size
        self.num_memory_slots = self.num_memory_slots or (
            required_memory_slots(self.module_specs, self.lora_rank, self.hidden_size) if self.module_shapes else 1
        )
        self.base_fingerprint = self.base_fingerprint or self.compute_fingerprint()

    @property
    def exported_rank(self) -> int:
        """The rank of an exported adapter: the generated LoRA's plus the learned bias LoRA's (`lora_head`)."""
        return self.lora_rank + self.bias_lora_rank

    @property
    def module_specs(self) -> list[ModuleSpec]:
        """The target modules with their shapes."""
        return [ModuleSpec(name, int(i), int(o)) for name, (i, o) in zip(self.target_modules, self.module_shapes)]

    def compute_fingerprint(self) -> str:
        """A short hash of the base LM shapes this hypernetwork depends on."""
        payload = [self.base_model_type, self.hidden_size, self.num_base_layers, self.base_vocab_size,
                   self.target_modules, self.module_shapes]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]

    def validate_layout(self) -> None:
        """Check every value is in bounds and the layout is self-consistent, before any tensor is allocated; raise
        `ValueError` naming the field and the allowed range otherwise (hostile or mistyped `config.json` files)."""
        check_bounds(vars(self))
        if len(self.target_modules) != len(self.module_shapes):
            raise ConfigError(f"target_modules ({len(self.target_modules)}) and module_shapes "
                              f"({len(self.module_shapes)}) must have the same length.")
        if self.hidden_size % self.m2p_num_heads:
            raise ConfigError(f"m2p_num_heads={self.m2p_num_heads} must divide hidden_size={self.hidden_size}.")
        if self.module_shapes:
            needed = required_memory_slots(self.module_specs, self.lora_rank, self.hidden_size)
            if self.num_memory_slots < needed:
                raise ConfigError(
                    f"num_memory_slots={self.num_memory_slots} is too small: one layer's LoRA needs "
                    f"{needed} slots of size {self.hidden_size} at lora_rank={self.lora_rank}. Leave it unset."
                )

    @classmethod
    def from_base_model(
        cls,
        base: str | PretrainedConfig | PreTrainedModel,
        target_modules: list[str] | None = None,
        revision: str | None = None,
        **overrides: Any,
    ) -> ShineConfig:
        """Derive a config from a base causal LM: a loaded model, its config, or a Hub id / local path.

        Only the base's config is needed: the layout is read from a weightless (meta-device) instance. Without a
        ``revision``, a base loaded from the Hub is recorded at the commit it was loaded from.

        Example:
            ```python
            config = ShineConfig.from_base_model("Qwen/Qwen3-0.6B", lora_rank=8)
            ```
        """
        model, name = _layout_model(base, revision)
        text_config = model.config.get_text_config()
        specs = discover_modules(model, target_modules)
        return cls(
            base_model_name_or_path=overrides.pop("base_model_name_or_path", name),
            base_model_revision=revision or _loaded_commit(base),
            base_model_type=text_config.model_type,
            hidden_size=text_config.hidden_size,
            num_base_layers=text_config.num_hidden_layers,
            base_vocab_size=text_config.vocab_size,
            target_modules=[spec.name for spec in specs],
            module_shapes=[[spec.in_features, spec.out_features] for spec in specs],
            **overrides,
        )


def _loaded_commit(base: str | PretrainedConfig | PreTrainedModel) -> str | None:
    """The Hub commit a loaded base (or its config) came from, so an unpinned load is recorded pinned; ``None``
    for local folders and the embedded default (whose weights a model card describes instead)."""
    config = base.config if isinstance(base, PreTrainedModel) else base
    commit = getattr(config, "_commit_hash", None) if not isinstance(config, str) else None
    return commit if isinstance(commit, str) and len(commit) == 40 else None


def default_num_heads(hidden_size: int, head_dim: int = 64) -> int:
    """`H / 64` heads when that divides, else the largest divisor of `H` not above it."""
    target = max(1, hidden_size // head_dim)
    return next(h for h in range(target, 0, -1) if hidden_size % h == 0)


def _layout_model(base: str | PretrainedConfig | PreTrainedModel, revision: str | None) -> tuple[PreTrainedModel, str]:
    """A model instance to read the layout from, and the name to record for it."""
    if isinstance(base, PreTrainedModel):
        return base, base.config.name_or_path
    if isinstance(base, str):
        config = AutoConfig.from_pretrained(resolve_base_model_path(base, revision), revision=revision)
        name = base
    else:
        config, name = base, base.name_or_path
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model, name
