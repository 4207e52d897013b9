"""Generated adapter folders carry our card, whichever way they are saved, and saving or reloading them offline
never touches the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel

import peft_shine
from conftest import make_shine
from peft_shine.adapters.card_text import is_adapter_card
from peft_shine.adapters.contexts import context_sha256
from tiny_models import make_tiny_lm


ALPHA, BETA = "The lighthouse keeper of Varn is called Ilse.", "The Varn ferry leaves at noon."


@pytest.fixture(scope="module")
def shine():
    shine = make_shine("llama")
    shine.generate_adapter([ALPHA, BETA], adapter_names=["default", "beta"])
    return shine


def card_of(folder: Path) -> str:
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert is_adapter_card(text) and "More Information Needed" not in text
    return text


def test_save_adapter_writes_our_card_and_the_folder_still_loads_with_plain_peft(shine, tmp_path):
    folder = shine.save_adapter(tmp_path / "beta", "beta")
    card = card_of(folder)
    assert context_sha256(BETA) in card and context_sha256(ALPHA) not in card
    assert 'PeftModel.from_pretrained(base, "beta")' in card and str(tmp_path) not in card
    assert "tiny-random-llama" in card
    assert "| LoRA rank | 2 |" in card and "`untrained`" in card
    loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), folder)
    ours = shine.peft_model.state_dict()
    for key, value in loaded.state_dict().items():
        if ".lora_" in key:
            assert torch.equal(value, ours[key.replace(".default.", ".beta.")])


def test_the_peft_models_save_pretrained_writes_our_card_for_every_adapter(shine, tmp_path):
    shine.peft_model.save_pretrained(tmp_path / "both")
    assert context_sha256(ALPHA) in card_of(tmp_path / "both")  # "default" is written flat, peft's layout
    assert context_sha256(BETA) in card_of(tmp_path / "both" / "beta")
    shine.peft_model.save_pretrained(tmp_path / "only-beta", selected_adapters=["beta"])
    assert context_sha256(BETA) in card_of(tmp_path / "only-beta" / "beta")


def test_a_readme_of_someone_else_is_kept(shine, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# My project\n")
    (project / "main.py").write_text("print('hi')\n")
    shine.save_adapter(project, "beta", overwrite=True)
    assert (project / "README.md").read_text() == "# My project\n"
    assert (project / "adapter_model.safetensors").is_file()


def test_both_writers_follow_one_card_rule_and_mark_the_folder(shine, tmp_path):
    """The PeftModel's save_pretrained marks the weights peft wrote (save_adapter may then replace the folder), and
    either writer replaces our unchanged card but keeps an edited one."""
    folder = tmp_path / "out" / "beta"
    shine.peft_model.save_pretrained(tmp_path / "out", selected_adapters=["beta"])
    first = card_of(folder)
    shine.save_adapter(folder, "beta")  # a marked folder of ours: replaced, not refused
    assert card_of(folder) == first
    (folder / "README.md").write_text("# my notes on beta\n")
    shine.peft_model.save_pretrained(tmp_path / "out", selected_adapters=["beta"])
    assert (folder / "README.md").read_text() == "# my notes on beta\n"
    shine.save_adapter(folder, "beta")
    assert (folder / "README.md").read_text() == "# my notes on beta\n"
    (folder / "README.md").unlink()
    shine.peft_model.save_pretrained(tmp_path / "out", selected_adapters=["beta"])
    assert card_of(folder) == first


def test_a_card_of_a_chunked_adapter_lists_its_chunks(tmp_path):
    from peft_shine import ChunkingConfig

    shine = make_shine("llama", max_context_length=64)
    text = " ".join(f"Fact {i}: the tower {i} is {i * 3} metres tall." for i in range(12))
    shine.generate_adapter(text, "doc", chunking=ChunkingConfig(chunk_tokens=64, overlap_tokens=0, combine="mean"))
    chunks = shine.adapter_info["doc"]["chunk_tokens"]
    card = card_of(shine.save_adapter(tmp_path / "doc", "doc"))
    assert len(chunks) >= 2 and f"| Context chunks | {len(chunks)} (" in card


OFFLINE = r"""
import socket, sys, threading, warnings
listener = socket.socket()
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen()
connections = []
def accept():
    while True:
        conn, _ = listener.accept()
        connections.append(1)
        conn.close()
threading.Thread(target=accept, daemon=True).start()

from pathlib import Path
from peft import PeftModel
from transformers import AutoModelForCausalLM
from peft_shine import AutoShineModel
from peft_shine.base_models import embedded_base_path
from peft_shine.shipped import shipped_checkpoint

out = Path(sys.argv[2])
shine = AutoShineModel.from_pretrained(shipped_checkpoint())
model = shine.generate_adapter("The Tarn bridge closes every winter at dusk.")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model.save_pretrained(out / "peft")
    shine.save_adapter(out / "shine")
    base = AutoModelForCausalLM.from_pretrained(str(embedded_base_path()))
    PeftModel.from_pretrained(base, str(out / "peft"))
network = [str(w.message)[:120] for w in caught if "fetch" in str(w.message) or "config file" in str(w.message)]
print("warnings:", network)
print("connections:", len(connections))
"""


@pytest.mark.integration
def test_saving_and_reloading_the_embedded_base_adapter_never_reaches_the_network(tmp_path):
    """The Hub endpoint is a local socket that counts connections: peft's own save would connect to it (its
    ``save_embedding_layers="auto"`` check) and warn "Unable to fetch remote file"; ours must not, nor the reload
    onto the embedded base's local folder that the card describes."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    src = Path(peft_shine.__file__).resolve().parents[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(src)}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-c", OFFLINE, str(port), str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=600, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warnings: []" in result.stdout and "connections: 0" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "embedded_base_path()" in card_of(tmp_path / "peft") and card_of(tmp_path / "shine")
