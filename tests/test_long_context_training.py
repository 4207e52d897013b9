"""Stage-2 training on long contexts read chunk-wise (`training.long_context_data`), on a tiny random model."""

from __future__ import annotations

import random

import pytest
import torch

from peft_shine import ShineModel
from peft_shine.adapters.chunking import chunk_document
from peft_shine.adapters.combine import combine_lora_weights
from peft_shine.adapters.pipeline import ChunkingConfig
from peft_shine.errors import ChunkingError, CompositionError
from peft_shine.hypernetwork.lora_binding import LoraWeights
from peft_shine.qa_data import QARecord
from peft_shine.training.data import TEXT_SEPARATOR
from peft_shine.training.long_context_data import (
    ChunkedShineDataCollator,
    build_chunked_qa_examples,
    tokenize_chunked_examples,
)
from peft_shine.training.trainer import ShineTrainer, ShineTrainingArguments, build_dataset
from tiny_models import make_char_tokenizer, make_tiny_lm


CHUNK = 48  # the tiny SHINE has 29 memory slots: chunks must be at least that long


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


def tiny_shine(seed: int = 0) -> ShineModel:
    lm = make_tiny_lm("llama", seed=seed, initializer_range=0.2)
    return ShineModel.from_base_model(lm, make_char_tokenizer(), seed=seed, lora_rank=2, lora_scale=0.03)


def key_records(count: int, seed: int = 0) -> list[QARecord]:
    """One fact per paragraph ("key 7 opens bacd."), asked about by its key number."""
    rng = random.Random(seed)
    records = []
    for index in range(count):
        code = "".join(rng.choice("abcd") for _ in range(4))
        records.append(QARecord(id=str(index), source="keys", title=f"t{index}", context=f"key {index} opens {code}.",
                                question=f"key {index}?", answers=(code,)))
    return records


def args_for(tmp_path, **overrides) -> ShineTrainingArguments:
    values = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none", "disable_tqdm": True, "seed": 0,
              "stage": "instruct", "qa_mode": "single", "objective": "ce", "chunk_tokens": CHUNK,
              "num_distractors": 2, "max_num_distractors": 6, "per_device_train_batch_size": 4,
              "per_device_eval_batch_size": 4, "learning_rate": 3e-3, "weight_decay": 0.0, "logging_steps": 10,
              "save_strategy": "no", "max_context_length": 64, "max_conversation_length": 400}
    return ShineTrainingArguments(**{**values, **overrides})


def test_examples_hold_the_gold_paragraph_among_distractors_and_are_chunked_like_inference():
    tokenizer = make_char_tokenizer()
    records = key_records(30)
    examples = build_chunked_qa_examples(records, num_distractors=2, max_num_distractors=6, seed=0)
    assert len(examples) == len(records)
    counts, positions = set(), set()
    for example in examples:
        paragraphs = example["context"].split(TEXT_SEPARATOR)
        question = example["messages"][1]["content"]
        gold = next(r for r in records if r.question == question)
        assert gold.context in paragraphs and len(set(paragraphs)) == len(paragraphs)
        assert example["messages"][2]["content"] == gold.answers[0]
        counts.add(len(paragraphs) - 1)
        positions.add(paragraphs.index(gold.context) / (len(paragraphs) - 1))
    assert min(counts) == 2 and max(counts) == 6 and len(counts) >= 4  # the count is drawn per example
    assert min(positions) == 0.0 and max(positions) == 1.0  # the gold paragraph moves (first ... last)

    dataset = tokenize_chunked_examples(examples, tokenizer, CHUNK, 400)
    for example, row in zip(examples, dataset):
        expected = [list(c.token_ids) for c in chunk_document(tokenizer, example["context"], CHUNK)]
        assert row["context_chunks"] == expected  # the inference chunker, unchanged
        assert all(len(chunk) <= CHUNK for chunk in expected)
        flat = [token for chunk in row["context_chunks"] for token in chunk]
        assert flat == tokenizer(example["context"], add_special_tokens=False)["input_ids"]
        student = tokenizer.decode(row["input_ids"])
        for paragraph in example["context"].split(TEXT_SEPARATOR):  # the student never reads the context
            assert paragraph not in student
    assert max(len(row["context_chunks"]) for row in dataset) >= 3


def test_collator_flattens_a_variable_number_of_chunks_with_their_owners():
    tokenizer = make_char_tokenizer()
    examples = build_chunked_qa_examples(key_records(12), num_distractors=1, max_num_distractors=7, seed=1)
    dataset = tokenize_chunked_examples(examples, tokenizer, CHUNK, 400)
    features = [dataset[i] for i in range(4)]
    batch = ChunkedShineDataCollator(tokenizer.pad_token_id)(features)
    sizes = [len(f["context_chunks"]) for f in features]
    assert len(set(sizes)) > 1, "the sample should mix chunk counts"
    assert batch["context_chunk_owner"].tolist() == [i for i, n in enumerate(sizes) for _ in range(n)]
    rows = [chunk for f in features for chunk in f["context_chunks"]]
    assert batch["context_input_ids"].shape == (len(rows), max(len(chunk) for chunk in rows))
    for row, chunk in enumerate(rows):  # left-padded: each chunk ends the row
        assert batch["context_input_ids"][row, -len(chunk):].tolist() == chunk
        assert batch["context_attention_mask"][row].sum().item() == len(chunk)
    assert batch["input_ids"].shape[0] == batch["labels"].shape[0] == 4


@pytest.mark.parametrize("rule", ["mean", "cat"])
def test_training_combination_gives_the_answer_logits_of_generate_adapter(rule):
    tokenizer = make_char_tokenizer()
    shine = tiny_shine().eval()
    examples = build_chunked_qa_examples(key_records(10), num_distractors=3, max_num_distractors=6, seed=2)[:3]
    dataset = tokenize_chunked_examples(examples, tokenizer, CHUNK, 400)
    assert sorted({len(row["context_chunks"]) for row in dataset})[-1] >= 2
    batch = ChunkedShineDataCollator(tokenizer.pad_token_id)([dataset[i] for i in range(3)])
    with torch.no_grad():
        chunk_loras = shine.generate_lora(batch["context_input_ids"], batch["context_attention_mask"])
        combined = combine_lora_weights(chunk_loras, batch["context_chunk_owner"], rule)
        logits, targets, keep = shine.answer_logits(combined, batch["input_ids"], batch["labels"],
                                                    batch["attention_mask"])
        output = shine(**batch, num_items_in_batch=1, chunk_combine=rule)
        base_logits = shine.answer_logits(None, batch["input_ids"], batch["labels"], batch["attention_mask"])[0]
    assert (logits - base_logits).abs().max() > 1e-3  # the combined adapter does change the answer pass
    torch.testing.assert_close(output.ce_sum, torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
    rows = keep.nonzero()[:, 0]
    for index, example in enumerate(examples):
        peft_model = shine.generate_adapter(example["context"], chunking=ChunkingConfig(chunk_tokens=CHUNK,
                                                                                         combine=rule))
        ids = torch.tensor([dataset[index]["input_ids"]])
        with torch.no_grad():
            reference = peft_model(input_ids=ids).logits[0][keep[index, :ids.shape[1]]]
        assert shine.adapter_info["default"]["rank"] == 2 * len(dataset[index]["context_chunks"])
        torch.testing.assert_close(logits[rows == index], reference, atol=2e-5, rtol=1e-4)
    shine.delete_adapters("default")


def test_combination_is_differentiable_and_exact_per_document():
    torch.manual_seed(0)
    a = torch.randn(3, 2, 5, 2, requires_grad=True)
    b = torch.randn(3, 2, 2, 4, requires_grad=True)
    combined = combine_lora_weights(LoraWeights([(a, b)], scale=0.5), torch.tensor([1, 0, 1]), "mean")
    x = torch.randn(6, 5)
    for doc, chunks in ((0, [1]), (1, [0, 2])):
        expected = sum(0.5 * x @ a[c, 1] @ b[c, 1] for c in chunks) / len(chunks)
        torch.testing.assert_close(combined.delta(1, 0, x[None].expand(2, -1, -1))[doc], expected)
    combined.pairs[0][0].sum().backward()
    assert a.grad is not None and torch.count_nonzero(a.grad[1]) > 0
    with pytest.raises(CompositionError, match="at least one chunk"):
        combine_lora_weights(LoraWeights([(a, b)]), [0, 2, 2])
    with pytest.raises(CompositionError, match="not used in training"):
        combine_lora_weights(LoraWeights([(a, b)]), [0, 0, 1], "svd")


def test_chunked_options_are_checked_with_a_fix(tmp_path):
    with pytest.raises(ChunkingError, match="qa_mode: single"):
        args_for(tmp_path, qa_mode="multi")
    with pytest.raises(ChunkingError, match="objective: ce"):
        args_for(tmp_path, objective="kd")
    with pytest.raises(ChunkingError, match="max_num_distractors"):
        args_for(tmp_path, num_distractors=5, max_num_distractors=3)
    with pytest.raises(ChunkingError, match="memory slots"):
        ShineTrainer(tiny_shine(), args_for(tmp_path, chunk_tokens=16))


def test_tiny_chunked_training_lowers_held_out_loss(tmp_path):
    records = key_records(240)
    args = args_for(tmp_path, max_steps=400, warmup_steps=10)
    train = build_dataset(args, make_char_tokenizer(), records[40:])
    held_out = build_dataset(args, make_char_tokenizer(), records[:40], seed=1)
    trainer = ShineTrainer(tiny_shine(), args, train_dataset=train, eval_dataset=held_out)
    assert isinstance(trainer.data_collator, ChunkedShineDataCollator)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    print(f"\nchunked tiny fit: before {before}\n                  after {after}")
    assert after["eval_loss"] < 0.7 * before["eval_loss"]
    assert after["eval_loss"] < 0.5 * after["eval_loss_no_adapter"]
    # the right chunks beat the chunks of another example (measured 1.67 vs 1.82 nats)
    assert after["eval_loss"] < after["eval_loss_wrong_context"] - 0.05
