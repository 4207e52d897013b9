"""Model card templates: rendering, metadata round trip, context privacy and packaging."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from hub_server import FakeHub
from peft_shine.adapters.card_text import templates_dir
from peft_shine.hub import cards as hub_cards
from peft_shine.hub.cards import render_adapter_card, render_hypernetwork_card


pytest_plugins = ["hub_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
CONTEXT = "The secret launch code of project Quokka is ``` 4-8-15-16 ```."
FULL_HYPERNETWORK = {
    "repo_id": "peft-shine/shine-smollm2-135m",
    "base_model": BASE,
    "base_model_revision": "12fd25f77366fa6b3b4b768ec3050bf629380bac",
    "license": "apache-2.0",
    "datasets": ["rajpurkar/squad"],
    "tags": ["question-answering"],
    "lora_rank": 8,
    "target_modules": ["q_proj", "v_proj"],
    "num_memory_slots": 32,
    "m2p_num_layers": 4,
    "training": {
        "stages": [{"name": "reconstruction", "datasets": "Salesforce/wikitext", "steps": 2000}, "qa"],
        "steps": 5000,
        "notes": "Trained on one CPU.",
    },
    "eval_results": [
        {"condition": "adapter", "dataset": "squad", "dataset_id": "rajpurkar/squad", "f1": 0.5312, "em": 0.41, "n": 200},
        {"condition": "question_only", "dataset": "squad", "f1": 0.102, "em": 0.05, "n": 200},
    ],
}


def _round_trip(card: ModelCard) -> ModelCard:
    """Parse a rendered card back from its text, as the Hub would."""
    return ModelCard(str(card))


def test_hypernetwork_card_with_all_fields() -> None:
    card = render_hypernetwork_card(**FULL_HYPERNETWORK)
    data = _round_trip(card).data
    assert data.library_name == "peft-shine"
    assert data.base_model == BASE and data["base_model_relation"] == "adapter"
    assert data.pipeline_tag == "text-generation" and data.license == "apache-2.0"
    assert data.tags == ["shine", "hypernetwork", "lora", "peft", "text-generation", "question-answering"]
    assert data.datasets == ["rajpurkar/squad", "Salesforce/wikitext"]
    metrics = {(result.metric_name, result.metric_value) for result in data.eval_results}
    assert metrics == {("F1 (adapter)", 0.5312), ("EM (adapter)", 0.41)}  # the baselines are not the model's results
    assert {result.metric_type for result in data.eval_results} == {"f1", "exact_match"}  # ids the Hub knows
    assert {result.dataset_type for result in data.eval_results} == {"rajpurkar/squad"}

    text = card.text
    assert 'AutoShineModel.from_pretrained("peft-shine/shine-smollm2-135m")' in text
    assert FULL_HYPERNETWORK["base_model_revision"] in text
    assert "| adapter | squad | 0.53 | 0.41 | 200 |" in text and "| question_only | squad | 0.10 |" in text
    assert "| reconstruction | Salesforce/wikitext | 2000 |" in text and "Total optimisation steps: 5000." in text
    assert "`q_proj`, `v_proj`" in text and "| Memory slots | 32 |" in text and "| M2P depth (layers) | 4 |" in text
    assert "2602.06358" in text
    assert "SHINE: A Scalable In-Context Hypernetwork for Mapping Context to LoRA in a Single Pass" in text


def test_hypernetwork_card_minimal() -> None:
    card = render_hypernetwork_card(repo_id="me/shine", base_model=BASE)
    data = _round_trip(card).data
    assert data.library_name == "peft-shine" and data.base_model == BASE
    assert data.eval_results is None and data.datasets is None
    assert "## Evaluation" not in card.text and "Training details were not recorded" in card.text
    assert 'AutoShineModel.from_pretrained("me/shine")' in card.text
    assert "not pinned" in card.text and "None" not in card.text


def test_adapter_card_hides_context_unless_asked() -> None:
    digest = hashlib.sha256(CONTEXT.encode("utf-8")).hexdigest()
    fields = {"repo_id": "me/quokka-adapter", "base_model": BASE, "hypernetwork_repo": "peft-shine/shine-smollm2-135m",
              "hypernetwork_revision": "abc123", "base_model_revision": "def456", "generation_seconds": 0.1234}
    hidden = render_adapter_card(**fields, context=CONTEXT)
    assert "Quokka" not in str(hidden) and digest in hidden.text
    assert "abc123" in hidden.text and "def456" in hidden.text and "0.12 s" in hidden.text

    shown = render_adapter_card(**fields, context=CONTEXT, include_context=True)
    assert CONTEXT in shown.text and "````text" in shown.text  # a fence longer than the context's backticks
    assert _round_trip(shown).data.to_dict() == _round_trip(hidden).data.to_dict()


def test_adapter_card_metadata_and_usage() -> None:
    card = render_adapter_card(repo_id="me/adapter", base_model=BASE, hypernetwork_repo="peft-shine/shine",
                               context_sha256="ab" * 32, lora_rank=8, target_modules=["q_proj"], tags=["squad"])
    data = _round_trip(card).data
    assert data.library_name == "peft" and data.base_model == BASE and data.pipeline_tag == "text-generation"
    assert data.tags == [f"base_model:adapter:{BASE}", "lora", "peft", "shine", "squad"]
    assert 'PeftModel.from_pretrained(base, "me/adapter")' in card.text
    assert 'snapshot_download("me/adapter")' in card.text and "max_lora_rank=8" in card.text
    assert "ab" * 32 in card.text


def test_adapter_card_minimal_and_hash_mismatch() -> None:
    card = render_adapter_card(repo_id="me/adapter", base_model=BASE, hypernetwork_repo="peft-shine/shine")
    assert "hash was not recorded" in card.text and "None" not in card.text
    assert _round_trip(card).data.library_name == "peft"
    with pytest.raises(ValueError, match="does not match"):
        render_adapter_card(repo_id="me/adapter", base_model=BASE, hypernetwork_repo="h/n", context="a",
                            context_sha256="0" * 64)


def test_cards_push_to_the_hub_and_load_back(hub_env: FakeHub) -> None:
    card = render_hypernetwork_card(**FULL_HYPERNETWORK)
    HfApi().create_repo(FULL_HYPERNETWORK["repo_id"])
    card.push_to_hub(FULL_HYPERNETWORK["repo_id"])  # validates the YAML against the (fake) Hub first
    loaded = ModelCard.load(FULL_HYPERNETWORK["repo_id"])
    assert loaded.content == card.content
    info = HfApi().model_info(FULL_HYPERNETWORK["repo_id"])
    assert info.card_data.library_name == "peft-shine" and "hypernetwork" in info.tags


def test_templates_are_package_data_and_hub_cards_links_to_them() -> None:
    import peft_shine

    package = Path(peft_shine.__file__).resolve().parent
    assert templates_dir().is_relative_to(package)  # wheels, Spaces and checkouts read the same files
    for template in (hub_cards.HYPERNETWORK_TEMPLATE, hub_cards.ADAPTER_TEMPLATE):
        assert (templates_dir() / template).is_file()
        assert (ROOT / "hub_cards" / template).samefile(templates_dir() / template)


def test_pyproject_ships_templates_and_the_shipped_checkpoint() -> None:
    setuptools_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools_config["packages"]["find"]["where"] == ["src"]
    data = setuptools_config["package-data"]["peft_shine"]
    assert "assets/**/*" in data and "shipped/*/*" in data  # the card templates are in assets/cards/
    package = ROOT / "src" / "peft_shine"
    for folder in [package, *package.rglob("*")]:  # every folder of Python modules is a package (found by find)
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), folder


def test_a_local_path_is_refused_as_base_model(tmp_path: Path) -> None:
    for local in (str(tmp_path), "./models/base", "/srv/models/llama", "C:\\models\\x"):
        with pytest.raises(ValueError, match="Hub model id"):
            render_hypernetwork_card(**{**FULL_HYPERNETWORK, "base_model": local})
        with pytest.raises(ValueError, match="Hub model id"):
            render_adapter_card(repo_id="a/b", base_model=local, hypernetwork_repo="a/c")


def test_card_command_writes_the_card_of_a_local_folder(tmp_path: Path) -> None:
    import json

    from peft_shine.cli import main

    folder = tmp_path / "shine-tiny"
    folder.mkdir()
    config = {"model_type": "shine", "base_model_name_or_path": BASE, "lora_rank": 3, "num_memory_slots": 53,
              "m2p_num_layers": 2, "target_modules": ["q_proj", "down_proj"]}
    (folder / "config.json").write_text(json.dumps(config))
    fields = tmp_path / "card.yaml"
    fields.write_text("license: apache-2.0\ntraining:\n  stages:\n    - {name: pretrain, steps: 750}\n")
    results = {"aggregates": {"adapter": {"f1": 31.234, "em": 20.0, "n": 349},
                              "question_only": {"f1": 9.5, "em": 4.0, "n": 349}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert main(["card", str(folder), "--card", str(fields), "--eval-results", str(tmp_path / "results.json")]) == 0
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == BASE and card.data.library_name == "peft-shine"
    assert "| adapter | SQuAD v1.1 | 31.23 | 20.00 | 349 |" in card.text and "| pretrain | – | 750 |" in card.text
    assert "`q_proj`, `down_proj`" in card.text and "| Memory slots | 53 |" in card.text
    metrics = {(m.metric_name, m.metric_value) for m in card.data.eval_results}
    assert ("F1 (adapter)", 31.23) in metrics and not any("question_only" in name for name, _ in metrics)
    assert "| question_only | SQuAD v1.1 | 9.50 |" in card.text  # baselines stay in the text table
    assert main(["card", str(tmp_path / "missing")]) == 2


def test_a_base_loaded_from_the_hub_is_recorded_at_its_commit() -> None:
    from peft_shine import ShineConfig
    from tiny_models import make_tiny_lm

    base = make_tiny_lm("llama")
    assert ShineConfig.from_base_model(base).base_model_revision is None  # built in code: no commit to record
    base.config._commit_hash = "0123456789abcdef0123456789abcdef01234567"  # what transformers sets on a Hub load
    assert ShineConfig.from_base_model(base).base_model_revision == base.config._commit_hash
    assert ShineConfig.from_base_model(base, revision="v1.0").base_model_revision == "v1.0"
    card = render_hypernetwork_card(**{**FULL_HYPERNETWORK, "base_model_revision": None, "base_weights": "a GGUF"})
    assert "none: trained on the weights named below" in card.text and "| Weights trained with | a GGUF |" in card.text
