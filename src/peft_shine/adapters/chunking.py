"""Token-aware chunking of long documents: cut on paragraph, then sentence, then word boundaries.

A document is tokenized **once** (plain tokenizer, no special tokens, as `contexts.context_token_ids` does) and cut
into consecutive token ranges of at most ``chunk_tokens`` tokens; each chunk's ids are exactly its slice of the
document's ids, so nothing is re-tokenized and no token is lost or invented at a cut. A cut is placed:

1. at the last paragraph break (a blank line) in the second half of the window, else
2. at the last sentence end (``. ! ?`` and closing quotes or brackets, then whitespace, or a line break), else
3. at the last word boundary (whitespace), else
4. anywhere (one "word" longer than half a chunk).

Whitespace before a cut stays at the end of the earlier chunk, so every chunk but the first starts with text.
With ``overlap_tokens > 0`` a chunk also repeats up to that many tokens of the end of the previous one, starting
at a sentence (else word) boundary when one is in reach. Chunks that hold only whitespace are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from peft_shine.adapters.contexts import ContextError
from peft_shine.errors import ChunkingError


PARAGRAPH, SENTENCE, WORD, ANYWHERE = 3, 2, 1, 0
_PARAGRAPH_END = re.compile(r"\n[ \t\r]*\n\s*$")
_SENTENCE_END = re.compile(r"(?:[.!?…][\"'”’)\]]*\s+|\n\s*)$")
_LOOK_BEHIND = 16  # characters before a cut inspected to classify it



@dataclass(frozen=True)
class TextChunk:
    """One chunk of a document: its token ids (a slice of the document's), where it starts, and its text."""

    token_ids: tuple[int, ...]
    start_token: int
    text: str

    @property
    def num_tokens(self) -> int:
        """The chunk's length in tokens."""
        return len(self.token_ids)


MAX_DOCUMENT_TOKENS = 131_072  # default cap on one chunked document: each chunk is an encoder pass and adds rank


def check_document_length(num_tokens: int, limit: int, index: int = 0) -> None:
    """Raise `ChunkingError` when a document of ``num_tokens`` tokens exceeds ``limit``, naming both and the fix."""
    if num_tokens > limit:
        raise ChunkingError(
            f"Document {index} has {num_tokens:,} tokens, more than the limit of {limit:,} tokens per document "
            f"(chunking max_document_tokens; every chunk costs an encoder pass, and 'cat' adds its rank to the "
            f"adapter). Split the document, or raise the limit: chunking={{'max_document_tokens': {num_tokens}}}."
        )


def check_chunk_sizes(chunk_tokens: int, overlap_tokens: int = 0) -> None:
    """Validate a chunk size and overlap (``chunk_tokens >= 1``, ``0 <= overlap_tokens <= chunk_tokens // 2``)."""
    for name, value in (("chunk_tokens", chunk_tokens), ("overlap_tokens", overlap_tokens)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ChunkingError(f"{name} must be an integer number of tokens, got {value!r}.")
    if chunk_tokens < 1:
        raise ChunkingError(f"chunk_tokens must be positive, got {chunk_tokens}.")
    if not 0 <= overlap_tokens <= chunk_tokens // 2:
        raise ChunkingError(f"overlap_tokens must be between 0 and half the chunk size ({chunk_tokens // 2}), got "
                            f"{overlap_tokens}: a larger overlap would read most tokens twice or more.")


def cut_levels(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """For each token index ``i``, how good a cut **before** token ``i`` is (`PARAGRAPH` … `ANYWHERE`); -1 where no
    cut may go (the token is whitespace only: the cut goes after it)."""
    levels = [-1] * len(offsets)
    for index, (start, end) in enumerate(offsets):
        piece = text[start:end]
        stripped = len(piece) - len(piece.lstrip())
        if stripped == len(piece):
            continue
        first = start + stripped  # the token's first non-whitespace character
        window = text[max(0, first - _LOOK_BEHIND):first]
        if first == 0 or _PARAGRAPH_END.search(window):
            levels[index] = PARAGRAPH
        elif _SENTENCE_END.search(window):
            levels[index] = SENTENCE
        elif window[-1:].isspace():
            levels[index] = WORD
        else:
            levels[index] = ANYWHERE
    return levels


def _best_cut(levels: Sequence[int], low: int, high: int, prefer_last: bool = True) -> int | None:
    """The index in ``[low, high]`` with the highest level (ties: the last, or the first), ``None`` if none."""
    best, best_level = None, -1
    span = range(low, high + 1) if prefer_last else range(high, low - 1, -1)
    for index in span:
        if levels[index] >= best_level and levels[index] >= 0:
            best, best_level = index, levels[index]
    return best


def chunk_token_ranges(levels: Sequence[int], chunk_tokens: int, overlap_tokens: int = 0) -> list[tuple[int, int]]:
    """Cut ``len(levels)`` tokens into ``[start, end)`` ranges of at most ``chunk_tokens`` tokens at the best cuts
    (`cut_levels`), each range after the first starting up to ``overlap_tokens`` before the previous one's end."""
    check_chunk_sizes(chunk_tokens, overlap_tokens)
    total, ranges, start = len(levels), [], 0
    while start < total:
        limit = start + chunk_tokens
        if limit >= total:
            ranges.append((start, total))
            break
        end = _best_cut(levels, start + max(1, chunk_tokens // 2), limit) or limit
        ranges.append((start, end))
        following = end
        if overlap_tokens:
            earliest = max(start + 1, end - overlap_tokens)
            words = [level if level >= WORD else -1 for level in levels]  # never start inside a word
            following = _best_cut(words, earliest, end - 1, prefer_last=False) or earliest
        start = following
    return ranges


def chunk_document(tokenizer: PreTrainedTokenizerBase, text: str, chunk_tokens: int, overlap_tokens: int = 0,
                   max_tokens: int = MAX_DOCUMENT_TOKENS, index: int = 0) -> list[TextChunk]:
    """Cut ``text`` (document ``index`` of a call) into `TextChunk` s of at most ``chunk_tokens`` tokens (see the
    module docstring).

    Raises:
        ContextError: the text is empty, whitespace only, or produces no tokens.
        ChunkingError: bad sizes, more than ``max_tokens`` tokens (`check_document_length`), or a tokenizer that
            cannot report character offsets (a "fast" tokenizer can).
    """
    check_chunk_sizes(chunk_tokens, overlap_tokens)
    if not isinstance(text, str) or not text.strip():
        raise ContextError("The document is empty or whitespace only; pass the text the adapter should learn.")
    if not getattr(tokenizer, "is_fast", False):
        raise ChunkingError("Chunking needs a fast tokenizer (character offsets); load it with use_fast=True.")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
    if not ids:
        raise ContextError("The document produced no tokens with this tokenizer.")
    check_document_length(len(ids), max_tokens, index)
    chunks = []
    for start, end in chunk_token_ranges(cut_levels(text, offsets), chunk_tokens, overlap_tokens):
        piece = text[offsets[start][0]:offsets[end - 1][1]]
        if piece.strip():
            chunks.append(TextChunk(tuple(ids[start:end]), start, piece))
    if not chunks:
        raise ContextError("The document produced only whitespace chunks; pass the text the adapter should learn.")
    return chunks
