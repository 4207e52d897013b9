"""User-facing adapter generation: contexts → named LoRA adapters on a `peft.PeftModel` sharing the base LM."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .adapter_names import module_path_parts, validate_adapter_names
from .adapter_store import add_adapters
from .contexts import as_context_list, context_sha256, tokenize_contexts
from .document_adapters import generate_document_adapters
from .export import lora_config, peft_state_dict, save_adapter


if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

    from .document_adapters import ChunkingConfig

_GENERATION_LOCK = threading.RLock()
MAX_CONTEXTS_PER_CALL = 4096  # each adapter stays in memory on the base; the cost per call is linear in the count


class AdapterGenerationMixin:
    """`generate_adapter` / `save_adapter` for `ShineModel` (kept apart from the training mechanism)."""

    def tokenize_contexts(self, contexts: str | Sequence[str], truncation: bool = False):
        """Validate and tokenize contexts for `encode` (left-padded). Returns ``(input_ids, attention_mask)``."""
        if self.tokenizer is None:
            raise RuntimeError("No tokenizer attached: pass tokenizer= to from_pretrained / attach_base_model.")
        ids, mask = tokenize_contexts(self.tokenizer, as_context_list(contexts), self.config.max_context_length,
                                      truncation=truncation)
        device = self.memory_slots.device
        return ids.to(device), mask.to(device)

    def generate_adapter(
        self,
        contexts: str | Sequence[str],
        adapter_names: str | Sequence[str] | None = None,
        *,
        truncation: bool = False,
        batch_size: int = 8,
        chunking: ChunkingConfig | dict | bool | int | None = None,
    ) -> PeftModel:
        """Generate one LoRA adapter per context in a single forward pass each and load them into a `PeftModel`.

        Args:
            contexts: a context string or a list of them.
            adapter_names: one name per context. Defaults to ``"default"`` for a single context (replacing the
                previous ``"default"``) and ``"context_0"``, ``"context_1"``, ... for a list.
            truncation: keep the first ``max_context_length`` tokens of longer contexts instead of raising.
            batch_size: contexts encoded per forward pass (chunks, with ``chunking``).
            chunking: read contexts longer than the window: a `ChunkingConfig` (``chunk_tokens``,
                ``overlap_tokens``, ``combine`` = ``"cat"`` / ``"mean"`` / ``"svd"``, ``rank``), a dict of its
                fields, ``True`` for the defaults or an int chunk size. Each context is cut into chunks, the chunks
                are encoded in batches and combined into one standard LoRA per context
                (`peft_shine.document_adapters`). Not with ``truncation``.

        The time is linear in the number of contexts (``benchmarks/bench_many_contexts.py``); one call takes at most
        `MAX_CONTEXTS_PER_CALL` (4,096) contexts, since every adapter stays in memory on the base until
        ``model.delete_adapter(name)``: call it in chunks for more.

        Returns:
            The `PeftModel` wrapping **the same base LM instance** (never a copy), with the new adapters loaded and
            the last one active. Use ``model.set_adapter(name)`` to switch, or ``adapter_names=[...]`` per row in
            ``model(...)`` / ``model.generate(...)`` for a mixed batch. ``model.save_pretrained(dir)`` writes a
            standard LoRA folder (a non-``"default"`` adapter goes in ``dir/<name>``; `save_adapter` writes flat).
        """
        texts = as_context_list(contexts)
        if len(texts) > MAX_CONTEXTS_PER_CALL:
            raise ValueError(f"Got {len(texts)} contexts; generate_adapter takes at most {MAX_CONTEXTS_PER_CALL} per "
                             f"call (each adapter stays in memory on the base). Call it in chunks, and delete adapters "
                             f"you no longer need with model.delete_adapter(name).")
        names = _default_names(texts, adapter_names)
        _check_batch_size(batch_size)
        validate_adapter_names(names, len(texts), self._base_layout()[1])
        if chunking is not None and chunking is not False:
            if truncation:
                raise ValueError("Pass either chunking (read the whole context) or truncation (keep its start).")
            return generate_document_adapters(self, texts, names, chunking, batch_size)
        with _GENERATION_LOCK:
            started = time.perf_counter()
            states = self._generate_states(texts, names, truncation, batch_size)
            self.peft_model = add_adapters(self.base_lm, self.peft_model, self.adapter_lora_config(), states)
            seconds = (time.perf_counter() - started) / len(texts)
            info = getattr(self, "adapter_info", {})
            for name, text in zip(names, texts):
                info[name] = {"context_sha256": context_sha256(text), "generation_seconds": seconds}
            self.adapter_info = info
            return self.peft_model

    def adapter_lora_config(self) -> LoraConfig:
        """A fresh copy of the generated adapters' `LoraConfig`. It depends only on the base layout, so it is derived
        once per attached base (before peft wraps the base, whose module count then grows with every adapter)."""
        return copy.deepcopy(self._base_layout()[0])

    def _base_layout(self) -> tuple[LoraConfig, frozenset[str]]:
        """The adapters' `LoraConfig` and the base's module path parts (names adapters must not take), once per base."""
        if getattr(self, "_adapter_config", None) is None:
            config = lora_config(self.base_lm, self.config.module_specs, self.config.lora_rank,
                                 self.config.base_model_name_or_path, self.config.base_model_revision)
            self._adapter_config = (config, module_path_parts(self.base_lm))
        return self._adapter_config

    @torch.no_grad()  # not inference_mode: the tensors become peft parameters
    def _generate_states(self, texts: list[str], names: list[str], truncation: bool, batch_size: int) -> dict:
        was_training = self.training
        self.eval()
        states = {}
        try:
            for start in range(0, len(texts), batch_size):
                ids, mask = self.tokenize_contexts(texts[start:start + batch_size], truncation=truncation)
                lora = self.generate_lora(ids, mask)
                for row, name in enumerate(names[start:start + batch_size]):
                    states[name] = peft_state_dict(self.base_lm, self.config.module_specs, lora, row)
        finally:
            self.train(was_training)
        return states

    def save_adapter(self, path: str | Path, adapter_name: str = "default", *, overwrite: bool = False) -> Path:
        """Write a generated adapter as a flat, standard peft LoRA folder (``adapter_config.json`` +
        ``adapter_model.safetensors``), atomically. It loads with ``PeftModel.from_pretrained(base, path)``.

        Nothing is ever deleted that peft-shine did not write: a previous adapter folder at ``path`` is replaced, but
        an existing file, or a folder holding anything else (source files, ``.git``, sub-folders), raises
        `peft_shine.save_targets.TargetExistsError`. ``overwrite=True`` writes the adapter's files into such a
        folder and keeps everything else (see `peft_shine.save_targets`).
        """
        if self.peft_model is None or adapter_name not in self.peft_model.peft_config:
            available = list(self.peft_model.peft_config) if self.peft_model is not None else []
            raise KeyError(f"No generated adapter named {adapter_name!r}; available: {available}.")
        count = 2 * self.config.num_base_layers * len(self.config.module_specs)  # A and B per module and layer
        return save_adapter(self.peft_model, adapter_name, path, overwrite=overwrite, expected_tensors=count)


def _default_names(texts: list[str], adapter_names: str | Sequence[str] | None) -> list[str]:
    if adapter_names is None:
        return ["default"] if len(texts) == 1 else [f"context_{i}" for i in range(len(texts))]
    if isinstance(adapter_names, str):
        return [adapter_names]
    if not isinstance(adapter_names, Sequence):
        raise TypeError(f"adapter_names must be a string or a list of strings (one per context), got "
                        f"{type(adapter_names).__name__}.")
    return list(adapter_names)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (contexts encoded per forward pass), got "
                         f"{batch_size!r}.")
