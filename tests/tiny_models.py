"""Tiny random causal LMs and a character tokenizer, built in code (no network, no files).

Every supported decoder family gets a config small enough that a forward pass takes milliseconds, so the
mechanism tests can run the real transformers modeling code of each family.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CHARACTERS = list(string.ascii_letters + string.digits + string.punctuation + " \n\t")
TINY_VOCAB_SIZE = 128


def make_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer with ChatML special tokens and a chat template."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    assert len(vocab) <= TINY_VOCAB_SIZE
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


_COMMON = {"vocab_size": TINY_VOCAB_SIZE, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 512, "pad_token_id": 0,
               "bos_token_id": 4, "eos_token_id": 3}

TINY_CONFIGS: dict[str, dict] = {
    "llama": dict(model_type="llama", **_COMMON, tie_word_embeddings=True),
    "qwen2": dict(model_type="qwen2", **_COMMON),
    "qwen3": dict(model_type="qwen3", **_COMMON, head_dim=16),
    "mistral": dict(model_type="mistral", **_COMMON, sliding_window=None),
    "gemma2": dict(model_type="gemma2", **_COMMON, head_dim=16),
    "gemma3_text": dict(model_type="gemma3_text", **_COMMON, head_dim=16, sliding_window=64),
    "phi3": dict(model_type="phi3", **_COMMON),
    "gpt2": {"model_type": "gpt2", "vocab_size": TINY_VOCAB_SIZE, "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512,
                 "n_inner": 96, "pad_token_id": 0, "bos_token_id": 4, "eos_token_id": 3},
}
FAMILIES = list(TINY_CONFIGS)


def make_tiny_lm(family: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised causal LM of the given family (fp32, eval mode, eager attention)."""
    from transformers import AutoConfig

    kwargs = dict(TINY_CONFIGS[family], **overrides)
    model_type = kwargs.pop("model_type")
    config = AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.config.name_or_path = f"tiny-random-{family}"
    return model.eval()


def write_training_folder(folder: Path, config: Mapping, texts: Sequence[str]) -> Path:
    """A folder for `shine train` runs on a tiny model: ``base/`` (tiny Llama + char tokenizer), ``config.json``
    (``config``, training arguments) and ``texts.jsonl`` (one ``{"text"}`` record per text)."""
    make_tiny_lm("llama", initializer_range=0.2).save_pretrained(folder / "base")
    make_char_tokenizer().save_pretrained(folder / "base")
    (folder / "config.json").write_text(json.dumps(dict(config)))
    (folder / "texts.jsonl").write_text("\n".join(json.dumps({"text": text}) for text in texts))
    return folder
