"""The shipped default hypernetwork (src/peft_shine/shipped/shine-smollm2-135m-instruct): present, small, documented, loadable
by path and by default, and trained: on held-out SQuAD paragraphs its adapters make the gold answers more likely
than adapters generated from other paragraphs do."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub import ModelCard

from peft_shine import AutoShineModel, ShineModel
from peft_shine.evaluation.conditions import derangement
from peft_shine.prompting import answer_system_message
from peft_shine.qa_data import load_qa_records
from peft_shine.shipped import SHIPPED_NAME, shipped_checkpoint
from peft_shine.storage.base_models import DEFAULT_BASE_MODEL
from peft_shine.training.data import conversation_turns


pytestmark = pytest.mark.integration

MAX_SHIPPED_BYTES = 32_000_000
NUM_CONTEXTS = 8


@pytest.fixture(scope="module")
def shine() -> ShineModel:
    path = shipped_checkpoint()
    assert path is not None and path.name == SHIPPED_NAME, "the default hypernetwork must ship in models/"
    return AutoShineModel.from_pretrained(str(path))


def test_the_shipped_folder_is_small_and_has_a_card():
    path = shipped_checkpoint()
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    assert (path / "model.safetensors").stat().st_size <= MAX_SHIPPED_BYTES
    card = ModelCard.load(path / "README.md")
    assert card.data.library_name == "peft-shine" and card.data.base_model == DEFAULT_BASE_MODEL
    assert {result.metric_name for result in card.data.eval_results} == {"F1 (adapter)", "EM (adapter)"}
    for condition in ("adapter", "in_context", "question_only", "wrong_context", "sft"):  # baselines: text only
        assert f"| {condition} | SQuAD v1.1 dev, held-out articles |" in card.text
    assert "Q4_1.gguf" in card.text  # how the base weights it was trained with were obtained


def test_the_shipped_hypernetwork_is_the_default_of_the_commands():
    from peft_shine.shipped import load_hypernetwork

    loaded = load_hypernetwork(None, base_model=DEFAULT_BASE_MODEL)
    assert loaded.trained and loaded.label.startswith("trained hypernetwork") and SHIPPED_NAME in loaded.label
    assert loaded.model.config.base_model_name_or_path == DEFAULT_BASE_MODEL


def _answer_loss(shine: ShineModel, adapter: str, question: str, answer: str) -> float:
    messages = [answer_system_message(), {"role": "user", "content": question},
                {"role": "assistant", "content": answer}]
    (ids, labels), = conversation_turns(shine.tokenizer, messages)
    model = shine.peft_model
    model.set_adapter(adapter)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()


def test_adapters_carry_their_own_held_out_context(shine):
    records = load_qa_records("squad", split="validation")
    contexts = list(dict.fromkeys(r.context for r in records))[:NUM_CONTEXTS]
    names = [f"held-out-{i}" for i in range(len(contexts))]
    shine.generate_adapter(contexts, adapter_names=names, truncation=True)
    wrong = derangement(len(contexts), seed=0)
    right_losses, wrong_losses = [], []
    for index, context in enumerate(contexts):
        for record in [r for r in records if r.context == context][:3]:
            right_losses.append(_answer_loss(shine, names[index], record.question, record.answers[0]))
            wrong_losses.append(_answer_loss(shine, names[wrong[index]], record.question, record.answers[0]))
    right, other = sum(right_losses) / len(right_losses), sum(wrong_losses) / len(wrong_losses)
    assert right < other - 0.1, f"answer loss with the right adapter {right:.3f}, with a wrong one {other:.3f}"
