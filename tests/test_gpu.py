"""CUDA checks (marker ``gpu``; skipped without a CUDA device; run by scripts/gpu_check.sh): a bf16 base on the GPU
generates nearly the fp32 adapter, a bf16 training step on the GPU trains the fp32 master weights, its peak memory
stays bounded, and a base spread over two GPUs (when there are two) encodes like one on a single GPU."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import cosine_similarity

from peft_shine import ShineModel
from peft_shine.training.data import RECONSTRUCTION_INSTRUCTION, encode_conversation
from peft_shine.training.trainer import ShineTrainer, ShineTrainingArguments
from tiny_models import make_char_tokenizer, make_tiny_lm


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
BF16 = torch.bfloat16
CONTEXT = "The capital of Freedonia is Fredville, on the river Fred."


def shine_on_cuda(dtype: torch.dtype, **base_overrides) -> ShineModel:
    lm = make_tiny_lm("qwen3", initializer_range=0.2, **base_overrides).to("cuda", dtype)
    return ShineModel.from_base_model(lm, make_char_tokenizer(), lora_rank=2, lora_scale=0.03)


def test_bf16_adapter_on_cuda_matches_fp32():
    loras, logits = [], []
    for dtype in (torch.float32, BF16):
        shine = shine_on_cuda(dtype)
        assert shine.memory_slots.device.type == "cuda" and shine.memory_slots.dtype == torch.float32
        ids, mask = shine.tokenize_contexts(CONTEXT)
        with torch.no_grad():
            loras.append(shine.generate_lora(ids, mask))
        model = shine.generate_adapter(CONTEXT)
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits.float())
    for (a32, b32), (a16, b16) in zip(loras[0].pairs, loras[1].pairs):
        for full, half in ((a32, a16), (b32, b16)):
            assert cosine_similarity(full.flatten(), half.flatten(), dim=0) > 0.99
    torch.testing.assert_close(logits[1], logits[0], atol=0.1, rtol=0.05)


def word_dataset(count: int = 16) -> list[dict]:
    """Reconstruction examples as plain lists (the GPU machine may not have ``datasets``)."""
    tokenizer = make_char_tokenizer()
    words = [f"{chr(97 + i % 4)}{chr(97 + i // 4 % 4)}{chr(97 + i // 16 % 4)}" for i in range(count)]
    examples = []
    for word in words:
        messages = [{"role": "user", "content": RECONSTRUCTION_INSTRUCTION}, {"role": "assistant", "content": word}]
        input_ids, labels, _ = encode_conversation(tokenizer, messages, 64)
        examples.append({"context_input_ids": tokenizer(word, add_special_tokens=False)["input_ids"],
                         "input_ids": input_ids, "labels": labels})
    return examples


def test_bf16_training_step_on_cuda_with_bounded_peak_memory(tmp_path):
    shine = shine_on_cuda(BF16)
    before = {n: p.detach().clone() for n, p in shine.named_parameters() if not n.startswith("base_lm.")}
    args = ShineTrainingArguments(output_dir=str(tmp_path), bf16=True, report_to="none", disable_tqdm=True,
                                  per_device_train_batch_size=4, learning_rate=1e-3, max_steps=3, save_strategy="no",
                                  max_context_length=32, max_conversation_length=64, logging_steps=1)
    torch.cuda.reset_peak_memory_stats()
    trainer = ShineTrainer(shine, args, train_dataset=word_dataset())
    trainer.train()
    peak = torch.cuda.max_memory_allocated()
    print(f"peak GPU memory of a tiny bf16 training run: {peak / 2**20:.1f} MiB")
    assert 0 < peak < 512 * 2**20
    after = {n: p.detach() for n, p in shine.named_parameters() if not n.startswith("base_lm.")}
    assert all(t.dtype == torch.float32 and t.device.type == "cuda" for t in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in after)
    assert trainer.skipped_steps == 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_base_spread_over_two_gpus_encodes_like_one(tmp_path):
    make_tiny_lm("qwen3", initializer_range=0.2).save_pretrained(tmp_path / "base")
    make_char_tokenizer().save_pretrained(tmp_path / "base")
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 1,
                  "model.norm": 1, "lm_head": 1}
    spread = ShineModel.from_base_model(str(tmp_path / "base"), device_map=device_map, lora_rank=2, seed=0)
    single = ShineModel.from_base_model(str(tmp_path / "base"), device_map={"": 0}, lora_rank=2, seed=0)
    single.load_state_dict(spread.state_dict())
    ids, mask = single.tokenize_contexts(CONTEXT)
    with torch.no_grad():
        torch.testing.assert_close(spread.encode(ids, mask).to("cuda:0"), single.encode(ids, mask))
    adapter = spread.generate_adapter(CONTEXT)
    with torch.no_grad():
        assert torch.isfinite(adapter(input_ids=ids).logits).all()
