"""Documents have a length limit, `chunking=0` is an error, invisible text is no context (issue 27, items 7, 8)."""

from __future__ import annotations

import pytest

from conftest import make_shine
from peft_shine import ChunkingConfig, ContextError
from peft_shine.adapters.chunking import MAX_DOCUMENT_TOKENS
from peft_shine.errors import ChunkingError


@pytest.fixture(scope="module")
def shine():
    return make_shine("llama")


@pytest.mark.parametrize("value", [0, 0.0, -1, 2.5])
def test_chunking_zero_is_an_error_not_no_chunking(shine, value):
    with pytest.raises(ChunkingError, match="chunk"):
        shine.generate_adapter("A short note about the harbour.", chunking=value)
    assert shine.peft_model is None


@pytest.mark.parametrize("text", ["\u200b\u200b\u200b", "\ufeff \u2060\n\u200c\u200d", "\x00\x01 \t"])
def test_a_context_with_no_visible_text_is_refused(shine, text):
    with pytest.raises(ContextError, match="no visible text"):
        shine.generate_adapter(text)
    with pytest.raises(ContextError, match="no visible text"):
        shine.generate_adapter(text, chunking=True)


def test_visible_text_around_invisible_characters_is_kept(shine):
    shine.generate_adapter("\u200bThe gate\u200b code is 4417.\ufeff", adapter_names="visible")
    shine.delete_adapters("visible")


def test_a_document_over_the_limit_is_refused_before_any_work_naming_the_limit(shine):
    text = "The archive holds maps of the coast. " * 20  # 740 characters: 740 tokens with the character tokenizer
    with pytest.raises(ChunkingError, match=r"740 tokens.*limit of 500.*max_document_tokens"):
        shine.generate_adapter(text, chunking=ChunkingConfig(chunk_tokens=64, max_document_tokens=500))
    assert shine.peft_model is None
    shine.generate_adapter(text, chunking={"chunk_tokens": 256, "max_document_tokens": 1000}, adapter_names="ok")
    assert len(shine.adapter_info["ok"]["chunk_tokens"]) >= 3
    shine.delete_adapters("ok")


def test_the_default_limit_refuses_a_megabyte_of_text(shine):
    text = "abcd efgh " * (MAX_DOCUMENT_TOKENS // 10 + 1000)
    with pytest.raises(ChunkingError, match=f"limit of {MAX_DOCUMENT_TOKENS:,}"):
        shine.generate_adapter(text, chunking=True)
