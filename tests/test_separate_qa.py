"""Separate QA (``qa_mode: separate``): a context's questions each in their own one-question conversation, several
sharing one context encoding — examples, rows in the collator, the loss over filler rows, and a training run."""

from __future__ import annotations

import pytest
import torch

from peft_shine.hypernetwork.losses import LossWeights, contrastive_nce, per_context_mean
from peft_shine.prompting import build_prompt
from peft_shine.qa_data import QARecord
from peft_shine.training.collate import ShineDataCollator
from peft_shine.training.data import build_qa_examples, conversation_turns, split_evenly, tokenize_examples
from peft_shine.training.trainer import ShineTrainer, build_dataset
from test_trainer import tiny_shine, training_args


def records(contexts: dict[str, list[tuple[str, str]]]) -> list[QARecord]:
    return [QARecord(f"{c}-{i}", "toy", "t", c, q, (a,)) for c, pairs in contexts.items()
            for i, (q, a) in enumerate(pairs)]


TOY = records({"ab cd": [("a?", "ab"), ("c?", "cd"), ("b?", "b"), ("d?", "d"), ("x?", "abcd")],
               "dc ba": [("d?", "dc"), ("b?", "ba")],
               "ca db": [("c?", "ca")]})


def test_split_evenly_balances_the_groups():
    assert [len(g) for g in split_evenly(range(5), 4)] == [3, 2]
    assert [len(g) for g in split_evenly(range(8), 4)] == [4, 4]
    assert split_evenly(list("abc"), 1) == [["a"], ["b"], ["c"]] and split_evenly([], 3) == []
    with pytest.raises(ValueError, match="questions_per_example"):
        split_evenly([1], 0)


def test_every_question_gets_its_own_inference_prompt_conversation(tokenizer):
    examples = build_qa_examples(TOY, tokenizer, 10_000, mode="separate", questions_per_example=4)
    assert sorted(len(e["conversations"]) for e in examples) == [1, 2, 2, 3]  # 5 questions: 3 + 2
    seen = []
    for example in examples:
        for messages in example["conversations"]:
            (ids, labels), = conversation_turns(tokenizer, messages)  # one exchange each
            question = messages[1]["content"]
            record = next(r for r in TOY if r.context == example["context"] and r.question == question)
            prompt = tokenizer(build_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
            assert ids[:len(prompt)] == prompt and set(labels[:len(prompt)]) == {-100}
            seen.append(record.id)
    assert sorted(seen) == sorted(r.id for r in TOY)


def test_rows_are_contiguous_per_context_and_fillers_carry_no_labels(tokenizer):
    examples = build_qa_examples(TOY, tokenizer, 10_000, mode="separate", questions_per_example=4)
    dataset = tokenize_examples(examples, tokenizer, 64, 128)
    features = sorted(dataset, key=lambda f: -len(f["input_ids"]))[:2]  # 3 rows and 2 rows
    batch = ShineDataCollator(pad_token_id=0)(features)
    assert batch["context_input_ids"].shape[0] == 2 and batch["labels"].shape[0] == 6  # k = 3 rows a context
    for block, feature in enumerate(features):
        for row in range(3):
            labels = batch["labels"][3 * block + row]
            if row < len(feature["labels"]):
                assert labels[:len(feature["labels"][row])].tolist() == feature["labels"][row]
            else:  # the filler: one pad token, no labels
                assert (labels == -100).all() and batch["attention_mask"][3 * block + row].sum() == 1


def test_loss_equals_each_row_under_its_own_adapter_and_ignores_fillers(tokenizer):
    shine = tiny_shine(lora_scale=0.3)
    examples = build_qa_examples(TOY, tokenizer, 10_000, mode="separate", questions_per_example=4)
    dataset = tokenize_examples(examples, tokenizer, 64, 128)
    features = sorted(dataset, key=lambda f: -len(f["input_ids"]))[:3]  # 3, 2 and 2 rows: k = 3, 2 fillers
    batch = ShineDataCollator(pad_token_id=0)(features)
    weights = LossWeights(ce=1.0, contrastive=0.5, negatives=2)
    with torch.no_grad():
        output = shine(**batch, loss_weights=weights)
        rows = batch["labels"].shape[0]
        real = batch["labels"].ne(-100).any(-1)
        nll = []
        for shift in range(3):  # every row under the adapter of the context `shift` before its own
            lora = shine.generate_lora(batch["context_input_ids"].roll(shift, 0),
                                       batch["context_attention_mask"].roll(shift, 0))
            logits, targets, keep = shine.answer_logits(lora, batch["input_ids"], batch["labels"],
                                                        batch["attention_mask"])
            ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            if shift == 0:
                plain = ce.mean()
            nll.append(per_context_mean(ce, keep.nonzero()[:, 0], rows))
        term = contrastive_nce(torch.stack(nll, 1)[real]).mean()
    assert int(real.sum()) == 7 and rows == 9
    torch.testing.assert_close(output.contrastive, term, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.loss, plain + 0.5 * term, atol=1e-5, rtol=1e-5)


def test_a_separate_qa_run_trains_and_monitors_in_multi_mode(tmp_path):
    data = [QARecord(f"{w}-{i}", "toy", "t", w, q, (a,)) for w in ["abcab", "dcba", "bbcd", "cadda", "acdb", "dbca"]
            for i, (q, a) in enumerate([("first?", w[:2]), ("last?", w[-2:]), ("all?", w)])]
    args = training_args(tmp_path, stage="instruct", qa_mode="separate", questions_per_example=2,
                         eval_qa_mode="multi", objective="ce+contrastive", contrastive_negatives=1, max_steps=3,
                         per_device_train_batch_size=2, learning_rate=1e-2,
                         max_conversation_length=256)
    shine = tiny_shine()
    train = build_dataset(args, shine.tokenizer, data)
    held_out = build_dataset(args, shine.tokenizer, data[:6], held_out=True, teacher=shine, distill=True)
    assert all(len(rows) <= 2 for rows in train["input_ids"]) and len(train) == 12  # 3 questions: 2 + 1
    assert isinstance(held_out["input_ids"][0][0], int)  # multi: one conversation per context, no teacher
    before = {n: p.detach().clone() for n, p in shine.named_parameters() if p.requires_grad}
    trainer = ShineTrainer(shine, args, train_dataset=train, eval_dataset=held_out)
    trainer.train()
    moved = [n for n, p in shine.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved and all(torch.isfinite(p).all() for p in shine.parameters())
    assert set(trainer.evaluate()) >= {"eval_loss", "eval_loss_wrong_context", "eval_own_adapter_top1"}


def test_separate_qa_refuses_teacher_targets(tmp_path):
    with pytest.raises(ValueError, match="qa_mode 'separate'"):
        training_args(tmp_path, stage="instruct", qa_mode="separate", objective="kd+ce")
    with pytest.raises(ValueError, match="eval_qa_mode must be one of"):
        training_args(tmp_path, eval_qa_mode="each")
