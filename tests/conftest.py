"""Shared fixtures: tiny random LMs of every family, a character tokenizer, and SHINE models on them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch


sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SHINE_CPU_BF16", "0")  # --dtype auto means fp32 in tests on every CPU; bf16 tests ask for it

from tiny_models import FAMILIES, make_char_tokenizer, make_tiny_lm  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_char_tokenizer()


def make_shine(family: str = "llama", seed: int = 0, **config):
    """A fresh SHINE hypernetwork (rank 2) on a tiny random LM of ``family``."""
    from peft_shine import ShineModel

    config.setdefault("lora_rank", 2)
    return ShineModel.from_base_model(make_tiny_lm(family, seed=seed), make_char_tokenizer(), seed=seed, **config)


def chat_batch(tokenizer, question: str, answer: str, rows: int = 1):
    """A chat-formatted conversation with labels on the assistant answer and its end-of-turn token only."""
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt + answer + "<|im_end|>", add_special_tokens=False, return_tensors="pt").input_ids
    labels = ids.clone()
    labels[:, : len(tokenizer(prompt, add_special_tokens=False).input_ids)] = -100
    return ids.repeat(rows, 1), labels.repeat(rows, 1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: tiny models are overhead-bound, and on a busy 2-core machine two threads
    that wait on each other ran several times slower. The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


__all__ = ["FAMILIES", "chat_batch", "make_shine"]
