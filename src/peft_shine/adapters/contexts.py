"""Turning context strings into the token batch the hypernetwork encodes, with clear errors for bad input."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from peft_shine.errors import ContextError


def as_context_list(contexts: str | Sequence[str]) -> list[str]:
    """Accept one string or a sequence of strings; reject anything else, empty or whitespace-only text."""
    items = [contexts] if isinstance(contexts, str) else contexts
    if not isinstance(items, Sequence) or isinstance(items, bytes) or len(items) == 0:
        raise ContextError(f"Expected a context string or a non-empty list of strings, got {type(contexts).__name__}.")
    result = []
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise ContextError(f"Context {index} is a {type(text).__name__}, not a str; decode or convert it first.")
        if not text.strip():
            raise ContextError(f"Context {index} is empty or whitespace only; pass the text the adapter should learn.")
        if not has_visible_text(text):
            raise ContextError(f"Context {index} has no visible text (only whitespace, zero-width or control "
                               f"characters such as U+200B); pass the text the adapter should learn.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ContextError(
                f"Context {index} is not valid Unicode: a lone surrogate {text[error.start]!r} at character "
                f"{error.start} (text decoded with errors='surrogateescape', or cut inside a character). Decode it "
                f"with errors='replace', or fix the source."
            ) from None
        result.append(text)
    return result


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds a character that is not whitespace, a control character or an invisible format
    character (zero-width space U+200B, joiners, word joiner U+2060, byte-order mark U+FEFF: Unicode Cc/Cf)."""
    return any(not char.isspace() and unicodedata.category(char) not in ("Cc", "Cf") for char in text)


def context_sha256(text: str) -> str:
    """The hex sha256 of a context's UTF-8 bytes (recorded in adapter cards instead of the text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def context_token_ids(tokenizer: PreTrainedTokenizerBase, contexts: list[str], max_length: int,
                      truncation: bool = False) -> list[list[int]]:
    """Token ids of each context, without special tokens or chat template. A context longer than ``max_length``
    tokens raises `ContextError` unless ``truncation=True`` (keeps the start)."""
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in contexts]
    for index, ids in enumerate(encoded):
        if not ids:
            raise ContextError(f"Context {index} produced no tokens with this tokenizer.")
        if len(ids) > max_length:
            if not truncation:
                raise ContextError(
                    f"Context {index} has {len(ids)} tokens, more than this hypernetwork's max_context_length "
                    f"({max_length}). Pass truncation=True to keep the first {max_length} tokens, or split it."
                )
            encoded[index] = ids[:max_length]
    return encoded


def tokenize_left_padded(
    tokenizer: PreTrainedTokenizerBase,
    contexts: list[str],
    max_length: int,
    truncation: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`context_token_ids`, **left**-padded so the memory slots that follow sit right after each context's last
    token. Returns ``(input_ids, attention_mask)``."""
    return left_pad(context_token_ids(tokenizer, contexts, max_length, truncation), pad_id=pad_token_id(tokenizer))


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(input_ids, attention_mask)`` tensors."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The pad token id, falling back to EOS (padding is always masked out)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


DEFAULT_BATCH_SIZE = 8  # contexts per encoder pass when the caller does not say
MAX_BATCH_TOKENS = 4096  # padded positions (context + memory slots) per encoder pass
MAX_PADDING = 0.1  # share of a pass's positions that may be padding


def plan_batches(lengths: Sequence[int], batch_size: int, slots: int, max_tokens: int = MAX_BATCH_TOKENS,
                 max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Indices of ``lengths`` in encoder batches: sorted by length, then cut greedily so that a batch holds at most
    ``batch_size`` contexts, at most ``max_tokens`` padded positions (rows × (longest + slots)) and at most
    ``max_padding`` of its positions as padding. A single context always forms a batch, whatever its length.

    Padding is work thrown away and a large padded batch is slower per context on a CPU than several small ones
    (``benchmarks/bench_generation.py: mixed_throughput``), so a bigger ``batch_size`` never makes generation slower.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    batches: list[list[int]] = []
    real = 0
    for index in order:
        batch = batches[-1] if batches else None
        if batch is not None:
            rows, width = len(batch) + 1, lengths[index] + slots  # the newcomer is the longest so far
            padded, kept = rows * width, real + lengths[index] + slots
            if rows <= batch_size and padded <= max_tokens and padded - kept <= max_padding * padded:
                batch.append(index)
                real = kept
                continue
        batches.append([index])
        real = lengths[index] + slots
    return batches
