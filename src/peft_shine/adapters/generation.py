"""User-facing adapter generation: contexts → named LoRA adapters on a `peft.PeftModel` sharing the base LM."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from transformers import PreTrainedTokenizerBase

from peft_shine.adapters.cards import attach_card_writer, card_files
from peft_shine.adapters.contexts import as_context_list, tokenize_left_padded
from peft_shine.adapters.export import lora_config, write_adapter_folder
from peft_shine.adapters.names import module_path_parts, validate_adapter_names
from peft_shine.adapters.pipeline import ChunkingConfig, generate, wants_chunking
from peft_shine.adapters.store import (
    GENERATION_LOCK,
    check_owned,
    claim_names,
    delete_adapters,
    forget_shared,
    record_owner,
    tuner_layers,
    visible_names,
)
from peft_shine.errors import AdapterStateError, ArgumentError, ConfigError, ModelStateError
from peft_shine.hypernetwork.configuration_shine import ShineConfig


MAX_CONTEXTS_PER_CALL = 4096  # each adapter stays in memory on the base; the cost per call is linear in the count


class AdapterGenerationMixin:
    """The adapter lifecycle of `ShineModel`: create (`generate_adapter`), replace (the same name again), save
    (`save_adapter`), delete (`delete_adapters`) and scope (`adapter_scope`), all on one `PeftModel` shared with the
    base LM. Kept apart from the training mechanism; `ShineModel.__init__` declares every attribute used here."""

    config: ShineConfig
    tokenizer: PreTrainedTokenizerBase | None
    peft_model: PeftModel | None
    adapter_info: dict[str, dict[str, Any]]  # adapter name -> its record (`pipeline.adapter_records`)
    memory_slots: torch.nn.Parameter
    _adapter_config: tuple[LoraConfig, frozenset[str]] | None
    _lora_sentinel: torch.nn.Module | None  # one LoRA layer of the shared PeftModel: its merge flag outlives unload

    def tokenize_contexts(self, contexts: str | Sequence[str], truncation: bool = False):
        """Validate and tokenize contexts for `encode` (left-padded). Returns ``(input_ids, attention_mask)``."""
        if self.tokenizer is None:
            raise ModelStateError("No tokenizer attached: pass tokenizer= to from_pretrained / attach_base_model.")
        ids, mask = tokenize_left_padded(self.tokenizer, as_context_list(contexts), self.config.max_context_length,
                                      truncation=truncation)
        device = self.memory_slots.device
        return ids.to(device), mask.to(device)

    def generate_adapter(
        self,
        contexts: str | Sequence[str],
        adapter_names: str | Sequence[str] | None = None,
        *,
        truncation: bool = False,
        batch_size: int | None = None,
        chunking: ChunkingConfig | dict | bool | int | None = None,
    ) -> PeftModel:
        """Generate one LoRA adapter per context in a single forward pass each and load them into a `PeftModel`.

        Args:
            contexts: a context string or a list of them.
            adapter_names: one name per context. Defaults to ``"default"`` for a single context (replacing the
                previous ``"default"``) and ``"context_0"``, ``"context_1"``, ... for a list.
            truncation: keep the first ``max_context_length`` tokens of longer contexts instead of raising.
            batch_size: at most this many contexts per encoder pass (chunks, with ``chunking``); passes are also
                capped at `contexts.MAX_BATCH_TOKENS` padded positions and, without ``chunking``, `contexts.MAX_PADDING`
                of padding (`peft_shine.adapters.contexts.plan_batches`). Default: `contexts.DEFAULT_BATCH_SIZE`
                contexts; with ``chunking``, one chunk per pass on a CPU (faster and lighter there:
                ``benchmarks/bench_long_context.py``) and `contexts.DEFAULT_BATCH_SIZE` on an accelerator.
            chunking: read contexts longer than the window: a `ChunkingConfig` (``chunk_tokens``,
                ``overlap_tokens``, ``combine`` = ``"cat"`` / ``"mean"`` / ``"svd"``, ``rank``), a dict of its
                fields, ``True`` for the defaults or an int chunk size. Each context is cut into chunks, the chunks
                are encoded in batches and combined into one standard LoRA per context. Not with ``truncation``.

        Every context takes one path (`peft_shine.adapters.pipeline`): planned into encoder rows (a context, or its
        chunks), encoded in passes, reduced to one LoRA per context (a one-row context kept as it is), added to the
        base's shared `PeftModel` (all or nothing) and recorded in ``adapter_info[name]``: ``context_sha256``,
        ``generation_seconds`` (per context), ``chunk_tokens`` (the token count of each row), ``combine`` (the
        chunking rule, ``None`` without chunking), ``rank`` and ``svd_max_error`` (``"svd"`` only, else ``None``).

        The time is linear in the number of contexts (``benchmarks/bench_many_contexts.py``); one call takes at most
        `MAX_CONTEXTS_PER_CALL` contexts, since every adapter stays in memory on the base until
        ``model.delete_adapter(name)``: call it in chunks for more.

        Returns:
            The `PeftModel` wrapping **the same base LM instance** (never a copy), with the new adapters loaded and
            the last one active. Use ``model.set_adapter(name)`` to switch, or ``adapter_names=[...]`` per row in
            ``model(...)`` / ``model.generate(...)`` for a mixed batch. ``model.save_pretrained(dir)`` writes a
            standard LoRA folder (a non-``"default"`` adapter goes in ``dir/<name>``; `save_adapter` writes flat).
        """
        texts = as_context_list(contexts)
        if len(texts) > MAX_CONTEXTS_PER_CALL:
            raise ConfigError(f"Got {len(texts)} contexts; generate_adapter takes at most {MAX_CONTEXTS_PER_CALL} per "
                              f"call (each adapter stays in memory on the base). Call it in chunks, and delete "
                              f"adapters you no longer need with model.delete_adapter(name).")
        names = _default_names(texts, adapter_names)
        if batch_size is not None:
            _check_batch_size(batch_size)
        validate_adapter_names(names, len(texts), self._base_layout()[1])
        if wants_chunking(chunking) and truncation:
            raise ConfigError("Pass either chunking (read the whole context) or truncation (keep its start).")
        with GENERATION_LOCK:
            self.check_base_model_state()
            claim_names(self.base_lm, self, names)  # another model's adapter on the same base is never replaced
            try:
                generated = generate(self, texts, names, truncation=truncation, batch_size=batch_size,
                                     chunking=chunking)
            except BaseException:
                self.check_base_model_state()  # a failed add may have unwrapped the base: forget a stale PeftModel
                raise
            self.peft_model = generated.peft_model
            self._remember_lora_layer()
            record_owner(self.base_lm, self, names)
            self.adapter_info.update(generated.records)
            return attach_card_writer(self, self.peft_model)

    def delete_adapters(self, names: str | Sequence[str]) -> None:
        """Delete adapters of this model (weights and `adapter_info`; another model's on the same base, and unknown
        names, are skipped), in time linear in their number. Deleting the last adapter on the base unwraps the base
        LM, which is then plain again (``peft_model`` becomes ``None``; the next `generate_adapter` wraps it anew)."""
        names = [names] if isinstance(names, str) else list(names)
        with GENERATION_LOCK:
            names = visible_names(self.base_lm, self, names)
            for name in names:
                self.adapter_info.pop(name, None)
            self.peft_model = delete_adapters(self.base_lm, self.peft_model, names)
            if self.peft_model is None:
                self._lora_sentinel = None  # the base is plain again; the next adapter wraps it anew

    @contextlib.contextmanager
    def adapter_scope(self) -> Iterator[list[str]]:
        """Yield a list; every adapter name appended to it is deleted when the block ends, however it ends, and the
        adapter that was active before is active again (when it still exists)."""
        previous = self.peft_model.active_adapter if self.peft_model is not None else None
        names: list[str] = []
        try:
            yield names
        finally:
            self.delete_adapters(names)
            if self.peft_model is not None and previous in self.peft_model.peft_config:
                self.peft_model.set_adapter(previous)

    def check_base_model_state(self) -> None:
        """Make sure the shared base LM is still the one SHINE encodes with.

        ``merge_and_unload()`` on the returned `PeftModel` writes an adapter into the base's weights: SHINE would
        then encode with a different model, so this raises `AdapterStateError` (reload the base model, or merge
        into a copy). ``unload()`` only removes peft's wrappers: the weights are intact, so the stale `PeftModel` is
        forgotten and the next adapter wraps the base anew. A merged-but-not-unloaded adapter (``merge_adapter()``)
        raises too (``unmerge_adapter()`` first; a merge/unmerge round trip is fine). Decided from peft's own
        merge flags (kept on one LoRA layer after its wrapper is gone), so float rounding never trips it."""
        layers = tuner_layers(self.base_lm)
        if any(getattr(layer, "merged", False) for layer in layers):
            raise AdapterStateError("An adapter is merged into the base model's weights (merge_adapter()): call "
                                    "unmerge_adapter() on the PeftModel before generating adapters.")
        if self.peft_model is None or layers:
            return
        if self._lora_sentinel is not None and getattr(self._lora_sentinel, "merged", False):
            raise AdapterStateError(
                "An adapter was merged into the base model's weights with merge_and_unload(): adapters generated "
                "now would not fit it. Reload the base model (e.g. ShineModel.from_pretrained again); to deploy a "
                "merged model, merge into a separate copy of the base.")
        self.peft_model, self._lora_sentinel = None, None  # unload()ed: the base is plain again, weights intact
        forget_shared(self.base_lm)

    def _remember_lora_layer(self) -> None:
        """Keep one LoRA layer of the shared PeftModel (looked up once per wrapping, not per call)."""
        if self._lora_sentinel is None:
            self._lora_sentinel = next(iter(tuner_layers(self.base_lm)), None)

    def adapter_lora_config(self) -> LoraConfig:
        """A fresh copy of the generated adapters' `LoraConfig`. It depends only on the base layout, so it is derived
        once per attached base (before peft wraps the base, whose module count then grows with every adapter)."""
        return copy.deepcopy(self._base_layout()[0])

    def _base_layout(self) -> tuple[LoraConfig, frozenset[str]]:
        """The adapters' `LoraConfig` and the base's module path parts (names adapters must not take), once per base."""
        if getattr(self, "_adapter_config", None) is None:
            config = lora_config(self.base_lm, self.config.module_specs, self.config.exported_rank,
                                 self.config.base_model_name_or_path, self.config.base_model_revision)
            self._adapter_config = (config, module_path_parts(self.base_lm))
        return self._adapter_config

    def save_adapter(self, path: str | Path, adapter_name: str = "default", *, overwrite: bool = False) -> Path:
        """Write a generated adapter as a flat, standard peft LoRA folder (``adapter_config.json`` +
        ``adapter_model.safetensors`` + a README.md card, `peft_shine.adapters.cards`), atomically. It loads with
        ``PeftModel.from_pretrained(base, path)``.

        Nothing is ever deleted that peft-shine did not write: a previous adapter folder at ``path`` is replaced, but
        an existing file, or a folder holding anything else (source files, ``.git``, sub-folders), raises
        `peft_shine.storage.save_targets.TargetExistsError`. ``overwrite=True`` writes the adapter's files into such a
        folder and keeps everything else (see `peft_shine.storage.save_targets`). Only an adapter this model
        generated, with the weights it generated, or one no model generated (composed), is saved; another model's on
        the same base raises `AdapterNotFoundError` (a `KeyError`), changed weights `AdapterSaveError`.
        """
        with GENERATION_LOCK:
            check_owned(self.base_lm, self.peft_model, self, adapter_name)  # not another model's; unchanged
        count = 2 * self.config.num_base_layers * len(self.config.module_specs)  # A and B per module and layer
        return write_adapter_folder(self.peft_model, adapter_name, path, card_files(self, adapter_name, path),
                                    overwrite=overwrite, expected_tensors=count)


def _default_names(texts: list[str], adapter_names: str | Sequence[str] | None) -> list[str]:
    if adapter_names is None:
        return ["default"] if len(texts) == 1 else [f"context_{i}" for i in range(len(texts))]
    if isinstance(adapter_names, str):
        return [adapter_names]
    if not isinstance(adapter_names, Sequence):
        raise ArgumentError(f"adapter_names must be a string or a list of strings (one per context), got "
                            f"{type(adapter_names).__name__}.")
    return list(adapter_names)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer (contexts encoded per forward pass), got "
                          f"{batch_size!r}.")
