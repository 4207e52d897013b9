"""Long documents: token-aware chunking and `generate_adapter(..., chunking=...)` into one standard peft LoRA."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict

from conftest import make_shine
from peft_shine import ChunkingConfig, ChunkingError, CompositionError, ContextError
from peft_shine.adapters.chunking import chunk_document, chunk_token_ranges
from peft_shine.adapters.export import peft_state_dict
from tiny_models import make_char_tokenizer, make_tiny_lm


pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = [f"Fact {i}: the {w} lamp is {c}." for i, (w, c) in
             enumerate(zip(["red", "old", "tall", "small", "blue", "warm"] * 4, ["on", "off", "lit", "dim"] * 6))]
DOCUMENT = "\n\n".join(" ".join(SENTENCES[i:i + 3]) for i in range(0, 24, 3))  # 8 paragraphs of 3 sentences


@pytest.fixture(scope="module")
def shine():
    return make_shine("llama", lora_scale=1.0)  # a large scale, so the adapters visibly change the logits


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_chunks_are_slices_of_the_document_cut_at_paragraphs(tokenizer):
    chunks = chunk_document(tokenizer, DOCUMENT, 200)
    assert len(chunks) > 1 and all(c.num_tokens <= 200 for c in chunks)
    assert [t for c in chunks for t in c.token_ids] == _ids(tokenizer, DOCUMENT)  # no token lost or invented
    assert all(c.text.endswith("\n\n") for c in chunks[:-1])  # every cut at a blank line
    assert all(c.text.startswith("Fact") for c in chunks)


def test_a_long_paragraph_is_cut_at_sentence_ends_and_overlap_starts_at_a_sentence(tokenizer):
    paragraph = " ".join(SENTENCES)  # one paragraph, ~700 characters
    chunks = chunk_document(tokenizer, paragraph, 120, overlap_tokens=40)
    assert all(c.text.rstrip().endswith(".") for c in chunks)
    assert all(c.text.startswith("Fact") for c in chunks)
    for previous, current in zip(chunks, chunks[1:]):
        overlap = previous.start_token + previous.num_tokens - current.start_token
        assert 0 < overlap <= 40  # a repeated sentence, never more than asked
    assert chunks[-1].start_token + chunks[-1].num_tokens == len(_ids(tokenizer, paragraph))


def test_word_longer_than_a_chunk_is_cut_anywhere():
    levels = [0] * 50  # no boundary anywhere
    assert chunk_token_ranges(levels, 16) == [(0, 16), (16, 32), (32, 48), (48, 50)]


@pytest.mark.parametrize("size, overlap", [(0, 0), (10, 6), (10, -1), (True, 0), (10.0, 0)])
def test_bad_chunk_sizes_are_refused(tokenizer, size, overlap):
    with pytest.raises(ChunkingError):
        chunk_document(tokenizer, DOCUMENT, size, overlap)


@pytest.mark.parametrize("text", ["", "   \n\n\t "])
def test_empty_documents_are_refused(tokenizer, text):
    with pytest.raises(ContextError, match="empty"):
        chunk_document(tokenizer, text, 64)


@pytest.mark.parametrize("combine", ["mean", "cat"])
def test_a_single_chunk_document_gives_the_unchunked_adapter(shine, combine):
    """Unchunked generation is the one-chunk case of the one pipeline: identical tensors, one record shape."""
    text = SENTENCES[0] + " " + SENTENCES[1]
    plain = get_peft_model_state_dict(shine.generate_adapter(text, "plain"), adapter_name="plain")
    model = shine.generate_adapter(text, "chunked", chunking={"combine": combine})
    chunked = get_peft_model_state_dict(model, adapter_name="chunked")
    assert plain.keys() == chunked.keys()
    for key in plain:
        assert torch.equal(chunked[key], plain[key]), key
    assert model.peft_config["chunked"].r == model.peft_config["plain"].r == shine.config.lora_rank
    plain_info, chunked_info = shine.adapter_info["plain"], shine.adapter_info["chunked"]
    assert plain_info.keys() == chunked_info.keys()
    assert plain_info["chunk_tokens"] == chunked_info["chunk_tokens"] == [len(text)]
    assert (plain_info["combine"], chunked_info["combine"]) == (None, combine)
    assert plain_info["context_sha256"] == chunked_info["context_sha256"]


def _chunk_deltas(shine, chunks, scale=1.0):
    """Per module: ``scale`` × the sum of the updates of LoRAs generated from each chunk's ids separately."""
    total = {}
    for chunk in chunks:
        lora = shine.generate_lora(torch.tensor([chunk.token_ids]))
        state = peft_state_dict(shine.base_lm, shine.config.module_specs, lora, 0)
        for key in [k for k in state if k.endswith("lora_A.weight")]:
            prefix = key[: -len(".lora_A.weight")]
            delta = state[prefix + ".lora_B.weight"].double() @ state[key].double()
            total[prefix] = total.get(prefix, 0) + scale * delta
    return total


@pytest.mark.parametrize("combine", ["cat", "mean"])
def test_concatenated_adapter_is_exactly_the_sum_or_mean_of_the_chunk_updates(shine, combine):
    config = ChunkingConfig(chunk_tokens=160, overlap_tokens=20, combine=combine)
    model = shine.generate_adapter(DOCUMENT, "doc", chunking=config, batch_size=3)
    chunks = chunk_document(shine.tokenizer, DOCUMENT, 160, 20)
    info = shine.adapter_info["doc"]
    assert info["chunk_tokens"] == [c.num_tokens for c in chunks] and len(chunks) >= 4
    assert info["rank"] == len(chunks) * shine.config.lora_rank == model.peft_config["doc"].r
    state = get_peft_model_state_dict(model, adapter_name="doc")
    with torch.no_grad():
        expected = _chunk_deltas(shine, chunks, 1.0 if combine == "cat" else 1.0 / len(chunks))
    for prefix, delta in expected.items():
        got = state[prefix + ".lora_B.weight"].double() @ state[prefix + ".lora_A.weight"].double()
        torch.testing.assert_close(got, delta, atol=1e-5, rtol=1e-4)


def test_svd_adapter_has_the_budget_rank_and_a_measured_error(shine):
    model = shine.generate_adapter(DOCUMENT, "svd", chunking={"chunk_tokens": 160, "combine": "svd", "rank": 4})
    state = get_peft_model_state_dict(model, adapter_name="svd")
    assert model.peft_config["svd"].r == 4 and all(t.shape[0] == 4 for k, t in state.items() if "lora_A" in k)
    assert 0 < shine.adapter_info["svd"]["svd_max_error"] < 1


def test_chunked_adapter_saves_and_reloads_with_plain_peft(shine, tmp_path):
    model = shine.generate_adapter(DOCUMENT, "default", chunking=ChunkingConfig(chunk_tokens=160))
    shine.save_adapter(tmp_path / "doc-adapter")
    ids = torch.tensor([_ids(shine.tokenizer, "Which lamp is lit?")])
    with torch.no_grad():
        expected = model(ids).logits
        with model.disable_adapter():
            base = model(ids).logits
        loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), tmp_path / "doc-adapter").eval()
        reloaded = loaded(ids).logits
    assert (expected - base).abs().max() > 1e-3  # the adapter does something ...
    torch.testing.assert_close(reloaded, expected, atol=1e-5, rtol=1e-5)  # ... and plain peft reproduces it
    assert loaded.peft_config["default"].r == model.peft_config["default"].r > shine.config.lora_rank


def test_batch_size_does_not_change_the_adapter(shine):
    one = get_peft_model_state_dict(shine.generate_adapter(DOCUMENT, "b1", chunking=160, batch_size=1),
                                    adapter_name="b1")
    many = get_peft_model_state_dict(shine.generate_adapter(DOCUMENT, "b8", chunking=160, batch_size=8),
                                     adapter_name="b8")
    for key in one:
        torch.testing.assert_close(many[key], one[key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunking, error, match", [
    ({"chunk_tokens": 8}, ChunkingError, "memory slots"),
    ({"chunk_tokens": 4096}, ChunkingError, "max_context_length|positions"),
    ({"chunk_tokens": 160, "combine": "svd", "rank": 10_000}, CompositionError, "larger than the concatenated"),
    ({"chunk_tokens": 160, "combine": "svd"}, CompositionError, "rank budget"),
    ({"chunk_tokens": 160, "combine": "cat", "rank": 2}, CompositionError, "'svd' rule only"),
    ({"chunk_tokens": 160, "combine": "sum"}, CompositionError, "Unknown combination rule"),
    ({"chunk_size": 160}, ChunkingError, "Unknown chunking options"),
])
def test_bad_chunking_is_refused_and_adds_nothing(shine, chunking, error, match):
    shine.generate_adapter(SENTENCES[0], "keep")
    before = set(shine.peft_model.peft_config)
    with pytest.raises(error, match=match):
        shine.generate_adapter([DOCUMENT, SENTENCES[1]], ["new_a", "new_b"], chunking=chunking)
    assert set(shine.peft_model.peft_config) == before


def test_chunking_with_truncation_is_refused(shine):
    with pytest.raises(ValueError, match="either chunking"):
        shine.generate_adapter(DOCUMENT, chunking=True, truncation=True)


def test_several_documents_get_one_adapter_each_with_its_own_rank(shine):
    short, long = SENTENCES[0], DOCUMENT
    model = shine.generate_adapter([short, long], ["short", "long"], chunking=ChunkingConfig(chunk_tokens=200))
    assert model.peft_config["short"].r == shine.config.lora_rank
    assert model.peft_config["long"].r == len(chunk_document(make_char_tokenizer(), long, 200)) * shine.config.lora_rank
    assert model.active_adapter == "long"


def test_an_adapter_name_can_be_regenerated_at_another_rank(shine):
    shine.generate_adapter(SENTENCES[0], "only")
    model = shine.generate_adapter(DOCUMENT, "only", chunking=160)
    assert model.peft_config["only"].r > shine.config.lora_rank
    state = get_peft_model_state_dict(model, adapter_name="only")
    assert all(t.shape[0] == model.peft_config["only"].r for k, t in state.items() if "lora_A" in k)
    model = shine.generate_adapter(SENTENCES[0], "only")  # and back to the plain rank
    assert model.peft_config["only"].r == shine.config.lora_rank and model.active_adapter == "only"


def test_the_last_adapter_on_the_base_can_be_regenerated_at_another_rank():
    shine = make_shine("llama")
    shine.generate_adapter(SENTENCES[0])
    model = shine.generate_adapter(DOCUMENT, chunking=160)
    assert list(model.peft_config) == ["default"] and model.peft_config["default"].r > shine.config.lora_rank
    ids = torch.tensor([_ids(shine.tokenizer, "Which lamp?")])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
