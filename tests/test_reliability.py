"""Bad input, damaged files, crashes and concurrency: clear errors, nothing lost (issue: reliability)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import get_peft_model_state_dict

from conftest import make_shine
from peft_shine import BaseModelMismatchError, CheckpointError, ContextError, ShineModel
from tiny_models import make_char_tokenizer, make_tiny_lm


@pytest.fixture
def checkpoint(tmp_path):
    shine = make_shine("llama")
    shine.save_pretrained(tmp_path / "shine")
    return shine, tmp_path / "shine"


@pytest.mark.parametrize("keep", [0.5, 0.01, 0.0])
def test_truncated_checkpoint_raises_a_clear_error(checkpoint, keep):
    shine, folder = checkpoint
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupted.*save it again"):
        ShineModel.from_pretrained(folder, base_model=shine.base_lm)


def test_pickle_only_checkpoint_is_refused_unless_opted_in(checkpoint):
    shine, folder = checkpoint
    state = {k: v for k, v in shine.state_dict().items() if not k.startswith("base_lm.")}
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle-based weights .pytorch_model.bin.*allow_pickle=True"):
        ShineModel.from_pretrained(folder, base_model=shine.base_lm)
    loaded = ShineModel.from_pretrained(folder, base_model=shine.base_lm, allow_pickle=True)
    assert torch.equal(loaded.memory_slots, shine.memory_slots)


def test_tokenizer_of_another_model_is_refused():
    tokenizer = make_char_tokenizer()
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(64)])
    with pytest.raises(BaseModelMismatchError, match="tokenizer has .* tokens but the base model's embedding"):
        ShineModel.from_base_model(make_tiny_lm("llama"), tokenizer)


def test_bfloat16_base_with_float32_hypernetwork():
    base = make_tiny_lm("llama").to(torch.bfloat16)
    shine = ShineModel.from_base_model(base, make_char_tokenizer(), lora_rank=2)
    assert shine.memory_slots.dtype == torch.float32
    model = shine.generate_adapter("Alice moved to Lyon.")
    logits = model(torch.randint(5, 100, (1, 6))).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_adapters_generated_from_threads_equal_sequential_ones():
    contexts = [f"Context number {i}: the code word is {'xyzw'[i] * 5}." for i in range(4)]
    sequential = make_shine("llama", lora_scale=0.05)
    reference = {}
    for i, text in enumerate(contexts):
        sequential.generate_adapter(text, adapter_names=f"ctx{i}")
        reference[i] = get_peft_model_state_dict(sequential.peft_model, adapter_name=f"ctx{i}", save_embedding_layers=False)
    shine = make_shine("llama", lora_scale=0.05)
    errors = []

    def worker(index: int) -> None:
        try:
            shine.generate_adapter(contexts[index], adapter_names=f"ctx{index}")
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for i in range(4):
        state = get_peft_model_state_dict(shine.peft_model, adapter_name=f"ctx{i}", save_embedding_layers=False)
        for key, value in reference[i].items():
            torch.testing.assert_close(state[key], value, atol=1e-6, rtol=1e-5)


_shared = {}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=60), st.text(alphabet=st.characters(categories=["Cc", "Zs"]), max_size=10),
                      st.text(alphabet="ab", min_size=300, max_size=400)))
def test_generate_adapter_never_crashes_on_arbitrary_text(text):
    shine = _shared.setdefault("shine", make_shine("llama", max_context_length=256))
    try:
        model = shine.generate_adapter(text)
    except ContextError as error:
        assert any(cause in str(error) for cause in ("empty", "max_context_length", "no tokens", "no visible text"))
    else:
        assert "default" in model.peft_config


SAVER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from conftest import make_shine
    shine = make_shine("llama")
    shine.save_pretrained({folder!r})
    print("READY", flush=True)
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            shine.memory_slots.fill_(step)
        shine.save_pretrained({folder!r})
""")


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.9])
def test_hypernetwork_save_killed_mid_write_leaves_a_loadable_checkpoint(tmp_path, delay):
    folder = tmp_path / "shine"
    code = SAVER.format(tests=str(Path(__file__).parent), folder=str(folder))
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "READY"
        time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    loaded = ShineModel.from_pretrained(folder, load_base_model=False)
    value = loaded.memory_slots.flatten()[0].item()
    assert torch.all(loaded.memory_slots == value)  # one complete version, never a mix or a partial file
