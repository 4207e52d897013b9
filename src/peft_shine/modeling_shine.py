"""`ShineModel`: the SHINE hypernetwork (memory slots, meta-LoRA, M2P) attached to a frozen base causal LM.

Data flow (see docs/architecture.md):
    context ids ─► pass 1: frozen LM + meta-LoRA over [context ; memory slots] ─► memory grid (B, L, M, H)
                ─► M2P ─► parameter grid ─► slice ─► LoRA A/B per layer and module (`LoraWeights`)
    training:   bind the LoRA (hooks) ─► pass 2 on the conversation without the context ─► loss
    inference:  export to a peft `PeftModel` on the same base instance (`generate_adapter`)

The base LM is attached after construction (`attach_base_model`) and never saved in a hypernetwork checkpoint.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers import initialization as init
from transformers.utils import ModelOutput

from peft_shine.adapters.combine import combine_lora_weights
from peft_shine.adapters.generation import AdapterGenerationMixin
from peft_shine.adapters.store import all_adapters_disabled
from peft_shine.errors import BaseModelMismatchError, ConfigError, ModelStateError
from peft_shine.hypernetwork import losses
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.hypernetwork.layout import find_decoder_layers, slice_parameter_grid, target_layer_modules
from peft_shine.hypernetwork.lora_binding import LoraBinder, LoraWeights, capture_layer_outputs, stack_layer_states
from peft_shine.hypernetwork.lora_head import GeneratedLoraHead
from peft_shine.hypernetwork.m2p import M2PTransformer
from peft_shine.loading import ShineLoadingMixin, check_plain_base, check_tokenizer, first_device, place_hypernetwork
from peft_shine.storage.base_models import renamed_argument
from peft_shine.storage.checkpoints import check_finite
from peft_shine.storage.io_utils import staged_files
from peft_shine.storage.revisions import HubOrigin
from peft_shine.storage.save_targets import HYPERNETWORK_WEIGHTS, check_hypernetwork_folder


BASE_PREFIX = "base_lm."


@dataclass
class ShineOutput(ModelOutput):
    """Output of `ShineModel.forward`: the answer-pass loss, the number of labelled tokens, and (detached) the summed
    cross-entropy and, with teacher targets, the summed distillation KL over those tokens; with the contrastive
    term, its mean over the conversations."""

    loss: torch.Tensor | None = None
    num_label_tokens: torch.Tensor | None = None
    ce_sum: torch.Tensor | None = None
    kd_sum: torch.Tensor | None = None
    contrastive: torch.Tensor | None = None


class ShineModel(AdapterGenerationMixin, ShineLoadingMixin, PreTrainedModel):
    """SHINE hypernetwork: turns a context into a LoRA adapter for a frozen causal LM in one forward pass.

    User-facing adapter generation (`generate_adapter`, `save_adapter`) comes from `AdapterGenerationMixin`; loading
    (`from_pretrained`, `from_base_model`: which keyword reaches the base LM) from `ShineLoadingMixin`.
    """

    config_class = ShineConfig
    base_model_prefix = "shine"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = True
    _no_split_modules: set[str] | list[str] = []  # replaced by the attached base's own list (FSDP auto-wrap, device maps)

    def __init__(self, config: ShineConfig) -> None:
        super().__init__(config)
        hidden, layers = config.hidden_size, config.num_base_layers
        self.memory_slots = nn.Parameter(torch.empty(config.num_memory_slots, hidden),
                                         requires_grad=config.train_memory_slots)
        rank = config.meta_lora_rank
        self.meta_lora_A = nn.ParameterList(nn.Parameter(torch.empty(layers, i, rank)) for i, _ in config.module_shapes)
        self.meta_lora_B = nn.ParameterList(nn.Parameter(torch.empty(layers, rank, o)) for _, o in config.module_shapes)
        self.m2p = M2PTransformer(layers, config.num_memory_slots, hidden, depth=config.m2p_num_layers,
                                  num_heads=config.m2p_num_heads, ffn_dim=config.m2p_ffn_dim,
                                  input_norm=config.m2p_input_norm)
        self.generated_head = GeneratedLoraHead(config.module_shapes, layers, config.bias_lora_rank,
                                                config.generated_gate_init)  # bias LoRA and gate (lora_head.py)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._binder: LoraBinder | None = None
        self.peft_model: PeftModel | None = None  # the base's shared PeftModel holding the generated adapters
        self.adapter_info: dict[str, dict[str, Any]] = {}  # adapter name -> its record (`pipeline.adapter_records`)
        self.hub_origin: HubOrigin | None = None  # where from_pretrained / push_to_hub last met the Hub
        self._adapter_config: tuple[LoraConfig, frozenset[str]] | None = None  # derived once per attached base
        self._lora_sentinel: nn.Module | None = None  # one generated LoRA layer (its merge flag outlives unload)
        self.post_init()

    @classmethod
    def can_generate(cls) -> bool:
        """The hypernetwork generates adapters, not text (no generation_config.json in checkpoints)."""
        return False

    # ------------------------------------------------------------------ weights
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, ShineModel):
            init.normal_(module.memory_slots, std=0.02)
            for a, b in zip(module.meta_lora_A, module.meta_lora_B):
                init.normal_(a, std=math.sqrt(self.config.meta_lora_init_scale))
                init.zeros_(b)  # the meta-LoRA is an exact no-op at initialisation
        # the bias LoRA through its own lists (transformers skips a module without parameters of its own, the head
        # without a gate); init.* skips tensors loaded from a checkpoint
        elif module is self.generated_head.bias_A:
            for a in module:
                init.normal_(a, std=math.sqrt(self.config.meta_lora_init_scale))
        elif module is self.generated_head.bias_B:
            for b in module:
                init.zeros_(b)
        elif isinstance(module, GeneratedLoraHead) and module.gate is not None:
            init.constant_(module.gate, module.gate_init)
        elif isinstance(module, M2PTransformer):
            init.zeros_(module.layer_embedding)
            init.zeros_(module.slot_embedding)
        else:
            super()._init_weights(module)

    @torch.no_grad()
    def init_memory_from_embeddings(self, seed: int = 0) -> None:
        """Start the memory slots at randomly chosen token embeddings of the base LM (in-distribution inputs)."""
        weight = self.base_lm.get_input_embeddings().weight
        if weight.dim() != 2:  # partitioned away (DeepSpeed ZeRO-3 with zero3_init_flag)
            raise ModelStateError("The base's embedding matrix is partitioned: create the hypernetwork before "
                                  "DeepSpeed ZeRO-3 partitions the base (zero3_init_flag: false; see docs/gpu.md).")
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randint(0, weight.shape[0], (self.config.num_memory_slots,), generator=generator)
        self.memory_slots.copy_(weight[rows.to(weight.device)].float())

    # ------------------------------------------------------------------ base model
    @property
    def base_lm(self) -> PreTrainedModel:
        """The frozen base causal LM (raises if none is attached)."""
        if "base_lm" not in self._modules:
            raise ModelStateError("No base model attached: use ShineModel.from_pretrained(..., base_model=...) or "
                                  "model.attach_base_model(causal_lm, tokenizer).")
        return self._modules["base_lm"]

    def attach_base_model(self, base_model: PreTrainedModel | None = None,
                          tokenizer: PreTrainedTokenizerBase | None = None,
                          hypernetwork_dtype: torch.dtype | None = None, **deprecated: Any):
        """Attach (by reference, never copied) and freeze the base LM; check it matches this hypernetwork. The
        hypernetwork moves to the base's first device (``hypernetwork_dtype``: also cast; ``None`` keeps its dtype).
        (``base_lm=`` is the deprecated name of ``base_model``.)"""
        base_lm = renamed_argument(base_model, deprecated, "base_lm", "base_model", "attach_base_model")
        check_plain_base(base_lm)
        found = ShineConfig.from_base_model(base_lm, target_modules=self.config.target_modules,
                                            lora_rank=self.config.lora_rank)
        if found.base_fingerprint != self.config.base_fingerprint:
            raise BaseModelMismatchError(
                f"This hypernetwork was built for {self.config.base_model_name_or_path!r} "
                f"({self.config.base_model_type}, hidden {self.config.hidden_size}, {self.config.num_base_layers} "
                f"layers, shapes {self.config.module_shapes}); the given base is {found.base_model_type}, hidden "
                f"{found.hidden_size}, {found.num_base_layers} layers, shapes {found.module_shapes}. Load the base "
                f"model named in the config (or pass base_model=None to load it automatically)."
            )
        check_tokenizer(tokenizer, base_lm)
        if self._binder is not None:
            self._binder.remove()
        base_lm.requires_grad_(False)
        self._modules["base_lm"] = base_lm  # registered submodule (the property below guards access)
        self.tokenizer = tokenizer
        self.peft_model = None
        self._adapter_config = None  # derived from the new base on first use
        self._binder = LoraBinder(target_layer_modules(base_lm, self.config.module_specs))
        self._lora_sentinel = None
        self._no_split_modules = set(getattr(base_lm, "_no_split_modules", None) or ())
        place_hypernetwork(self.hypernetwork_parameters(), first_device(base_lm), hypernetwork_dtype)
        return self

    def hypernetwork_parameters(self) -> list[nn.Parameter]:
        """Every parameter of the hypernetwork (memory slots, meta-LoRA, M2P), none of the base LM."""
        return [p for name, p in self.named_parameters() if not name.startswith(BASE_PREFIX)]

    # ------------------------------------------------------------------ pass 1 and M2P
    def meta_lora(self) -> LoraWeights | None:
        """The meta-LoRA as a `LoraWeights` shared by the whole batch (``None`` at rank 0)."""
        if self.config.meta_lora_rank == 0:
            return None
        return LoraWeights([(a[None], b[None]) for a, b in zip(self.meta_lora_A, self.meta_lora_B)])

    def encode(self, context_input_ids: torch.Tensor, context_attention_mask: torch.Tensor | None = None):
        """Pass 1: the frozen LM with the meta-LoRA reads ``[context ; memory slots]`` and returns the residual
        stream at the memory slots after every decoder layer: ``(batch, layers, slots, hidden)``.

        Contexts must be **left**-padded. No lm_head, no KV cache.
        """
        inputs_embeds, mask, position_ids = self.encoder_inputs(context_input_ids, context_attention_mask)
        base, slots = self.base_lm, self.config.num_memory_slots
        _, layers = find_decoder_layers(base)
        with self._peft_disabled(), self._binder.bind(self.meta_lora()), \
                capture_layer_outputs(layers, last_positions=slots) as states:
            base.base_model(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids,
                            use_cache=False)
        return stack_layer_states(states, self.memory_slots.device, self.memory_slots.dtype)

    def encoder_inputs(self, context_input_ids: torch.Tensor, context_attention_mask: torch.Tensor | None = None):
        """Pass-1 inputs: ``[context embeddings ; memory slots]``, the extended mask and position ids that count
        from each context's first real token (contexts are left-padded)."""
        batch, slots = context_input_ids.shape[0], self.config.num_memory_slots
        if context_attention_mask is None:
            context_attention_mask = torch.ones_like(context_input_ids)
        embeds = self.base_lm.get_input_embeddings()(context_input_ids)
        memory = self.memory_slots.to(device=embeds.device, dtype=embeds.dtype)[None].expand(batch, -1, -1)
        inputs_embeds = torch.cat([embeds, memory], dim=1)
        mask = torch.cat([context_attention_mask, context_attention_mask.new_ones(batch, slots)], dim=1)
        return inputs_embeds, mask, (mask.cumsum(-1) - 1).clamp(min=0)

    def generate_lora(self, context_input_ids: torch.Tensor, context_attention_mask: torch.Tensor | None = None):
        """Context ids → `LoraWeights` with one LoRA per context (differentiable). With a bf16 base the M2P runs under
        bf16 autocast (its fp32 master weights cast per product; the grid comes back in the hypernetwork's dtype):
        its products are then as fast as the base's, and the LoRA is cast to bf16 in the hooks anyway."""
        states = self.encode(context_input_ids, context_attention_mask)
        fast = self.base_lm.dtype == torch.bfloat16 and states.dtype == torch.float32
        with torch.autocast(states.device.type, dtype=torch.bfloat16, enabled=fast):
            grid = self.m2p(states)
        grid = grid.to(states.dtype)
        pairs = slice_parameter_grid(grid, self.config.module_specs, self.config.lora_rank)
        return LoraWeights(self.generated_head(pairs, self.config.lora_scale), scale=self.config.lora_scale)

    # ------------------------------------------------------------------ pass 2
    @contextmanager
    def apply_lora(self, lora: LoraWeights | None):
        """Bind generated LoRA tensors onto the base LM for the block (differentiable; the training path)."""
        with self._peft_disabled(), self._binder.bind(lora):
            yield self.base_lm

    def answer_logits(self, lora: LoraWeights | None, input_ids: torch.Tensor, labels: torch.Tensor,
                      attention_mask: torch.Tensor | None = None):
        """Pass 2 with ``lora`` bound (``None``: the base alone): ``(logits, targets, keep)`` where ``logits`` are
        the ``(tokens, vocab)`` logits at every position whose next token is labelled (the lm_head runs only
        there), ``targets`` those labels in batch order and ``keep`` the ``(batch, length)`` mask of the positions."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = losses.labelled_positions(labels)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        with self.apply_lora(lora) as base:
            logits = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False, logits_to_keep=keep).logits
        targets = labels[:, 1:][keep[:, :-1]].to(logits.device)  # the lm_head may sit on another device
        return logits.reshape(-1, logits.shape[-1]), targets, keep.to(logits.device)

    def forward(
        self,
        context_input_ids: torch.Tensor,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        context_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        teacher_topk_ids: torch.Tensor | None = None,
        teacher_topk_logprobs: torch.Tensor | None = None,
        loss_weights: losses.LossWeights | tuple[float, float] = (1.0, 0.0),
        context_chunk_owner: torch.Tensor | None = None,
        chunk_combine: str = "mean",
        teacher_hidden: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ShineOutput:
        """Training loss: generate a LoRA from each context, then score the answer pass on the conversation
        **without** the context, over tokens whose label is not -100 (assistant tokens).

        ``loss_weights``: a `losses.LossWeights` (or the older ``(ce, kd)`` pair); `losses.training_loss` combines
        the terms. Plain cross-entropy is summed over labelled tokens and divided by ``num_items_in_batch`` (given by
        `Trainer` under gradient accumulation: the labelled-token count) or by the token count. With a KD weight and
        the teacher's top-k targets (``teacher_topk_ids``/``teacher_topk_logprobs``, one row per labelled token in
        batch order; see `peft_shine.training.distillation`), and/or a hidden weight and ``teacher_hidden`` (the
        teacher's states on ``hidden_layers`` at the same tokens), the loss is **averaged per context** and divided
        by ``num_items_in_batch`` (then: the number of contexts) or the row count. With a contrastive weight every
        conversation is also scored, in the same batched answer pass, under the adapters of ``negatives`` other
        contexts of the batch (the batch rolled by 1..negatives) and `losses.contrastive_nce` asks its own adapter
        to be the most likely. The conversation batch may hold ``k`` rows per context (rows grouped contiguously;
        a row without labels, a separate-QA filler, counts in no term).

        With ``context_chunk_owner`` the context rows are **chunks** (`peft_shine.adapters.chunking`) and
        ``context_chunk_owner[i]`` the document of chunk ``i``: the chunk LoRAs, generated in one batched pass, are
        combined per document by ``chunk_combine`` (`combine.combine_lora_weights`, what
        ``generate_adapter(..., chunking=...)`` does at inference) before the answer pass.
        """
        weights = losses.LossWeights.of(loss_weights)
        lora = self.generate_lora(context_input_ids, context_attention_mask)
        if context_chunk_owner is not None:
            lora = combine_lora_weights(lora, context_chunk_owner, chunk_combine)
        negatives = min(weights.negatives, lora.num_loras - 1) if weights.contrastive else 0
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        layers = weights.hidden_layers if weights.hidden and teacher_hidden is not None else ()
        with capture_layer_outputs(find_decoder_layers(self.base_lm)[1], layers) as captured:
            logits, targets, keep = self.answer_logits(
                lora.with_others(negatives), *(t.repeat(1 + negatives, 1) for t in (input_ids, labels, attention_mask)))
        rows = labels.shape[0]
        token_rows = keep.nonzero()[:, 0]
        ce_all = F.cross_entropy(logits.float(), targets, reduction="none")
        own = int(keep[:rows].sum())  # the first block of rows is scored under its own adapters
        ce, logits, targets = ce_all[:own], logits[:own], targets[:own]
        kd = hidden = contrastive = None
        if weights.kd:
            kd = losses.teacher_kl(logits, targets, *(None if t is None else t.to(logits.device)
                                                      for t in (teacher_topk_ids, teacher_topk_logprobs)))
        if layers:
            states = torch.stack([captured[i][:rows][keep[:rows].to(captured[i].device)] for i in layers], dim=1)
            hidden = losses.hidden_l1(states, teacher_hidden.to(states.device))
        if negatives:
            nll = losses.per_context_mean(ce_all, token_rows, rows * (1 + negatives)).view(1 + negatives, rows).T
            contrastive = losses.contrastive_nce(nll, weights.temperature)[keep[:rows].any(-1)]  # filler rows: none
        loss = losses.training_loss(ce, token_rows[:own], rows, weights, num_items_in_batch, kd, hidden, contrastive)
        return ShineOutput(loss=loss, num_label_tokens=targets.new_tensor(targets.numel()), ce_sum=ce.detach().sum(),
                           kd_sum=None if kd is None else kd.detach().sum(),
                           contrastive=None if contrastive is None else contrastive.detach().mean())

    # ------------------------------------------------------------------ checkpointing
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers: int = 1,
                                        offload: bool = False) -> None:
        """Checkpoint the base LM's layers in both passes. Always non-reentrant, with a ``context_fn`` that re-binds
        the LoRA of the original forward during recomputation (so gradients stay exact)."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant"):
            raise ConfigError("ShineModel needs non-reentrant checkpointing (use_reentrant=False).")
        kwargs.update(use_reentrant=False, context_fn=self._binder.checkpoint_context_fn)
        self.base_lm.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        """Alias of `activation_checkpointing_enable` (transformers 4.x name)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        self.base_lm.activation_checkpointing_disable()

    gradient_checkpointing_disable = activation_checkpointing_disable

    @property
    def is_activation_checkpointing(self) -> bool:
        return "base_lm" in self._modules and self.base_lm.is_activation_checkpointing

    @property
    def is_gradient_checkpointing(self) -> bool:  # the name transformers < 5.24 and peft read (no warning here)
        return self.is_activation_checkpointing

    # ------------------------------------------------------------------ peft interplay
    def _peft_disabled(self):
        """Generated peft adapters live on the shared base: switch every one off while SHINE runs it (also those of
        another `ShineModel` on the same base object, or a user's own)."""
        return all_adapters_disabled(self.base_lm)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory, *args, state_dict: dict | None = None, overwrite: bool = False,
                        **kwargs) -> None:
        """Save config + hypernetwork weights (safetensors); the base LM is never included. Each file is written
        atomically: a crash mid-save leaves the previous checkpoint readable. Weight files of an earlier save that
        this one does not write (a single file now saved in shards, or the reverse) are removed; other files are
        kept. A file path, or a folder whose ``config.json`` belongs to another model, is refused unless
        ``overwrite=True`` (see `peft_shine.storage.save_targets.check_hypernetwork_folder`); weights holding NaN/Inf are
        refused with a `CheckpointError` naming the tensor."""
        check_hypernetwork_folder(save_directory, overwrite=overwrite)
        if state_dict is None:
            state_dict = {name: p for name, p in self.named_parameters() if not name.startswith(BASE_PREFIX)}
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(BASE_PREFIX)}
        check_finite(state_dict, f"Not saved to {save_directory}")  # a diverged model must not replace a good one
        push = kwargs.pop("push_to_hub", False)
        hub_options = {k: kwargs.pop(k) for k in ("repo_id", "private", "token", "commit_message") if k in kwargs}
        # each file replaced atomically; stale weight files (single file <-> shards, index) removed; others kept
        with staged_files(save_directory, replaces=HYPERNETWORK_WEIGHTS) as staging:
            super().save_pretrained(staging, *args, state_dict=state_dict, **kwargs)
        if push:  # through our push_to_hub, which writes the SHINE model card
            repo_id = hub_options.pop("repo_id", None) or os.path.basename(os.path.abspath(save_directory))
            self.push_to_hub(repo_id, **hub_options)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load hypernetwork weights; base LM keys are ignored on both sides (Trainer resume)."""
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(BASE_PREFIX)}
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith(BASE_PREFIX)]
        if strict and (missing or result.unexpected_keys):
            raise ModelStateError(f"Hypernetwork state dict mismatch: missing {missing}, "
                                  f"unexpected {result.unexpected_keys}.")
        return result

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                    commit_message: str | None = None, commit_description: str | None = None,
                    token: bool | str | None = None, create_pr: bool = False,
                    model_card_fields: dict[str, Any] | None = None):
        """Upload the hypernetwork (config + safetensors, never the base LM) with a SHINE model card, in one commit.

        Replaces transformers' version, which would overwrite the card with a generic one. ``revision`` is a branch
        (created when missing); ``model_card_fields`` go to `peft_shine.hub.cards.render_hypernetwork_card`
        (``license``, ``datasets``, ``training``, ``eval_results``, ...). Returns the `CommitInfo`. See
        `peft_shine.hub.push_hypernetwork`.
        """
        from peft_shine.hub.push import push_hypernetwork  # hub/ builds on the core: reached only when pushing

        return push_hypernetwork(self, repo_id, model_card_fields=model_card_fields, private=private,
                                 revision=revision, commit_message=commit_message,
                                 commit_description=commit_description, token=token, create_pr=create_pr)


