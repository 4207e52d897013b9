"""`ShineTrainer` saves and pushes like the rest of peft-shine: no pickle anywhere, the SHINE card, only the
hypernetwork's files (against the loopback Hub server)."""

from __future__ import annotations

import json
from concurrent.futures import Future

from huggingface_hub import HfApi, ModelCard

from hub_server import FakeHub
from peft_shine import ShineTrainer
from test_trainer import random_words, tiny_shine, training_args, word_dataset


pytest_plugins = ["hub_fixtures"]
REPO = "tester/trained-shine"


def test_trainer_saves_json_args_and_pushes_a_shine_repo(hub_env: FakeHub, tmp_path) -> None:
    shine = tiny_shine()
    args = training_args(tmp_path / "run", max_steps=2, save_strategy="steps", save_steps=2, push_to_hub=True,
                         hub_model_id=REPO, hub_strategy="every_save")
    trainer = ShineTrainer(shine, args, train_dataset=word_dataset(random_words(8)))
    trainer.train()
    future = trainer.push_to_hub(license="mit", datasets="tiny/words", blocking=False)
    assert isinstance(future, Future) and future.result(timeout=60).oid  # blocking=False: a future of the commit

    for folder in (tmp_path / "run", tmp_path / "run" / "checkpoint-2"):
        assert not (folder / "training_args.bin").exists(), folder
        assert json.loads((folder / "training_args.json").read_text())["max_steps"] == 2
    files = sorted(HfApi().list_repo_files(REPO))
    assert files == [".gitattributes", "README.md", "config.json", "model.safetensors"]  # no pickle, no tokenizer
    commits = [c.title for c in HfApi().list_repo_commits(REPO)]
    assert "Training in progress, step 2" in commits and "End of training" in commits
    card = ModelCard.load(REPO)
    assert card.data.library_name == "peft-shine" and card.data.base_model == shine.config.base_model_name_or_path
    assert card.data.license == "mit" and card.data.datasets == ["tiny/words"]
    assert "Total optimisation steps: 2." in card.text and "transformers model" not in card.text
    local = ModelCard.load(tmp_path / "run" / "README.md") if (tmp_path / "run" / "README.md").exists() else None
    assert local is None or local.data.library_name == "peft-shine"
