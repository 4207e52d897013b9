"""Dtypes, devices and loading options, on CPU: base-model keywords reach the base, unknown ones raise, bf16 bases
with fp32 hypernetworks (adapters, a training step, save/load), the device logic of the LoRA binding and of the
memory-state collection (meta + CPU tensors), the ``--device``/``--dtype`` options and the cross-rank skip flag.
The CUDA versions are in test_gpu.py."""

from __future__ import annotations

import argparse
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch.overrides import TorchFunctionMode

from peft_shine import AutoShineModel, ShineModel, base_models
from peft_shine.cli import build_parser, main
from peft_shine.hypernetwork.lora_binding import LoraWeights, stack_layer_states
from peft_shine.loading import (
    CONFIG_FIELDS,
    Placement,
    check_tokenizer,
    first_device,
    place_hypernetwork,
    resolve_placement,
    split_options,
)
from peft_shine.shipped import load_hypernetwork
from peft_shine.storage.cpu_features import auto_dtype
from peft_shine.training.data import RECONSTRUCTION_INSTRUCTION, tokenize_examples
from peft_shine.training.recipe import build_model, training_placement
from peft_shine.training.trainer import ShineTrainer, ShineTrainingArguments, nonfinite_flag
from tiny_models import make_char_tokenizer, make_tiny_lm


BF16 = torch.bfloat16


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    """A saved tiny Llama with its tokenizer (a base loadable by path)."""
    folder = tmp_path_factory.mktemp("base")
    make_tiny_lm("llama", initializer_range=0.2).save_pretrained(folder)
    make_char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved_shine(base_folder, tmp_path_factory) -> Path:
    """A hypernetwork checkpoint whose config names ``base_folder``."""
    folder = tmp_path_factory.mktemp("shine")
    ShineModel.from_base_model(str(base_folder), lora_rank=2).save_pretrained(folder)
    return folder


def word_dataset(words: list[str]):
    """Reconstruction examples: the context is a word, the answer repeats it."""
    examples = [{"context": w, "messages": [{"role": "user", "content": RECONSTRUCTION_INSTRUCTION},
                                            {"role": "assistant", "content": w}]} for w in words]
    return tokenize_examples(examples, make_char_tokenizer(), 32, 64)


def dtypes(params) -> set[torch.dtype]:
    return {p.dtype for p in params}


def hypernetwork_state(shine: ShineModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in shine.named_parameters() if not n.startswith("base_lm.")}


# ---------------------------------------------------------------------------------------------- loading keywords


def test_from_base_model_loads_the_base_as_asked_and_keeps_the_hypernetwork_fp32(base_folder):
    shine = ShineModel.from_base_model(str(base_folder), dtype=BF16, attn_implementation="sdpa", lora_rank=2)
    assert dtypes(shine.base_lm.parameters()) == {BF16}
    assert dtypes(shine.hypernetwork_parameters()) == {torch.float32}
    assert shine.base_lm.config._attn_implementation == "sdpa"
    assert shine.config.lora_rank == 2 and not hasattr(shine.config, "attn_implementation")
    half = ShineModel.from_base_model(str(base_folder), dtype=BF16, hypernetwork_dtype=BF16, lora_rank=2)
    assert dtypes(half.hypernetwork_parameters()) == {BF16}


def test_from_pretrained_passes_base_options_and_reloads_fp32_weights(saved_shine, monkeypatch):
    seen = []
    real = base_models.AutoModelForCausalLM.from_pretrained

    def recording(*args, **kwargs):  # the real load, with its keywords recorded
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(base_models.AutoModelForCausalLM, "from_pretrained", recording)
    reloaded = ShineModel.from_pretrained(saved_shine, dtype=BF16, device_map="cpu", attn_implementation="sdpa")
    assert {k: seen[0][k] for k in ("dtype", "device_map", "attn_implementation")} == \
        {"dtype": BF16, "device_map": "cpu", "attn_implementation": "sdpa"}
    assert dtypes(reloaded.base_lm.parameters()) == {BF16}
    saved = load_file(saved_shine / "model.safetensors")
    state = hypernetwork_state(reloaded)
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    auto = AutoShineModel.from_pretrained(str(saved_shine), dtype=BF16)
    assert dtypes(auto.base_lm.parameters()) == {BF16}
    assert dtypes(auto.hypernetwork_parameters()) == {torch.float32}
    shipped_path = load_hypernetwork(str(saved_shine), **Placement("cpu", BF16).base_options())
    assert dtypes(shipped_path.model.base_lm.parameters()) == {BF16}


def test_unknown_keywords_raise_a_type_error_naming_them(base_folder, saved_shine):
    with pytest.raises(TypeError, match="lora_rnak"):
        ShineModel.from_base_model(str(base_folder), lora_rnak=2)
    with pytest.raises(TypeError, match="colour"):
        ShineModel.from_pretrained(saved_shine, colour="red")
    assert ShineModel.from_pretrained(saved_shine, max_context_length=64).config.max_context_length == 64
    with pytest.raises(TypeError, match="colour"):
        AutoShineModel.from_pretrained(str(saved_shine), colour="red")
    with pytest.raises(TypeError, match="already loaded base"):
        ShineModel.from_base_model(make_tiny_lm("llama"), make_char_tokenizer(), dtype=BF16)


def test_split_options_routes_base_keywords_and_renames_torch_dtype():
    base, rest = split_options({"token": "t", "cache_dir": "c", "device_map": "auto", "lora_rank": 2}, "f",
                               CONFIG_FIELDS)
    assert base == {"token": "t", "cache_dir": "c", "device_map": "auto"} and rest == {"lora_rank": 2}
    with pytest.warns(FutureWarning):
        base, _ = split_options({"torch_dtype": BF16}, "f")
    assert base == {"dtype": BF16}
    with pytest.raises(TypeError, match="both"):
        split_options({"torch_dtype": BF16, "dtype": BF16}, "f")


# ---------------------------------------------------------------------------------------------- bf16 on CPU


def test_bf16_base_generates_nearly_the_fp32_adapter():
    tokenizer = make_char_tokenizer()
    loras = []
    for dtype in (torch.float32, BF16):
        shine = ShineModel.from_base_model(make_tiny_lm("llama", initializer_range=0.2).to(dtype), tokenizer,
                                           lora_rank=2, lora_scale=0.03)
        ids, mask = shine.tokenize_contexts("The capital of Freedonia is Fredville.")
        with torch.no_grad():
            loras.append(shine.generate_lora(ids, mask))
        model = shine.generate_adapter("The capital of Freedonia is Fredville.")
        logits = model(input_ids=ids).logits
        assert logits.dtype == dtype and torch.isfinite(logits).all()
    for (a32, b32), (a16, b16) in zip(loras[0].pairs, loras[1].pairs):
        assert a16.dtype == torch.float32  # the M2P runs in fp32 on the bf16 base's memory states
        for full, half in ((a32, a16), (b32, b16)):
            cosine = torch.nn.functional.cosine_similarity(full.flatten(), half.flatten(), dim=0)
            assert cosine > 0.99, cosine


def test_bf16_training_step_updates_fp32_master_weights_and_round_trips(tmp_path):
    lm = make_tiny_lm("llama", initializer_range=0.2).to(BF16)
    shine = ShineModel.from_base_model(lm, make_char_tokenizer(), lora_rank=2, lora_scale=0.03)
    base_before = {n: p.clone() for n, p in shine.base_lm.named_parameters()}
    before = hypernetwork_state(shine)
    args = ShineTrainingArguments(output_dir=str(tmp_path), use_cpu=True, bf16=True, report_to="none",
                                  disable_tqdm=True, per_device_train_batch_size=2, learning_rate=1e-3,
                                  max_steps=2, save_strategy="no", max_context_length=32,
                                  max_conversation_length=64, logging_steps=1)
    trainer = ShineTrainer(shine, args, train_dataset=word_dataset(["abab", "cdcd", "abcd", "dcba", "aabb", "ccdd", "acbd", "bdac"]))
    trainer.train()
    after = hypernetwork_state(shine)
    assert dtypes(after.values()) == {torch.float32}
    assert all(torch.isfinite(t).all() for t in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in after)
    assert all(torch.equal(p, base_before[n]) for n, p in shine.base_lm.named_parameters())
    assert trainer.skipped_steps == 0 and trainer.nonfinite_losses == 0
    shine.save_pretrained(tmp_path / "saved")
    assert {t.dtype for t in load_file(tmp_path / "saved" / "model.safetensors").values()} == {torch.float32}
    reloaded = ShineModel.from_pretrained(tmp_path / "saved", base_model=shine.base_lm, tokenizer=shine.tokenizer)
    assert all(torch.equal(t, after[n]) for n, t in hypernetwork_state(reloaded).items())


def test_training_recipe_loads_the_base_in_the_placement_dtype(base_folder, tmp_path):
    args = ShineTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                  max_context_length=32, max_conversation_length=64)
    shine = build_model(str(base_folder), args, {"lora_rank": 2}, Placement("cpu", BF16))
    assert dtypes(shine.base_lm.parameters()) == {BF16}
    assert dtypes(shine.hypernetwork_parameters()) == {torch.float32}


# ---------------------------------------------------------------------------------------------- device logic


class MatmulDevices(TorchFunctionMode):
    """Records the devices of the tensor operands of every matrix product."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[set[torch.device]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__):
            self.calls.append({a.device for a in args if isinstance(a, torch.Tensor)})
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("num_loras", [1, 2])
def test_lora_delta_runs_on_the_device_of_its_input(num_loras):
    """A layer of a device-mapped base on another device ("meta" here) gets its LoRA factors moved there."""
    pairs = [(torch.randn(num_loras, 3, 8, 2), torch.randn(num_loras, 3, 2, 5))]
    x = torch.empty(2, 4, 8, device="meta", dtype=BF16)
    with MatmulDevices() as recorder:
        out = LoraWeights(pairs).delta(1, 0, x)
    assert out.device.type == "meta" and out.dtype == BF16 and out.shape == (2, 4, 5)
    assert recorder.calls and all(devices == {torch.device("meta")} for devices in recorder.calls)


def test_memory_states_of_layers_on_different_devices_are_stacked_on_one():
    states = [torch.randn(2, 3, 4), torch.empty(2, 3, 4, device="meta", dtype=BF16)]
    with pytest.raises(RuntimeError):
        torch.stack(states, dim=1)  # what a device map produced before
    stacked = stack_layer_states(states, torch.device("meta"), torch.float32)
    assert stacked.shape == (2, 2, 3, 4) and stacked.device.type == "meta" and stacked.dtype == torch.float32


def test_hypernetwork_goes_to_the_device_of_the_input_embeddings():
    lm = make_tiny_lm("qwen2")
    lm.get_input_embeddings().to("meta")  # the first device of a map; the rest stays on CPU
    assert first_device(lm).type == "meta"
    params = [torch.nn.Parameter(torch.randn(3, 4))]
    place_hypernetwork(params, torch.device("cpu"), BF16)  # (a parameter cannot be re-pointed at "meta" data)
    assert params[0].dtype == BF16 and isinstance(params[0], torch.nn.Parameter)


def test_no_split_modules_and_tokenizer_check_come_from_the_base():
    lm = make_tiny_lm("llama")
    shine = ShineModel.from_base_model(lm, make_char_tokenizer(), lora_rank=2)
    assert set(shine._no_split_modules) == set(lm._no_split_modules) == {"LlamaDecoderLayer"}
    assert not ShineModel._no_split_modules  # the class attribute is untouched
    lm.get_input_embeddings().weight = torch.nn.Parameter(torch.empty(0))  # a ZeRO-3 partitioned weight
    check_tokenizer(make_char_tokenizer(), lm)  # reads num_embeddings, not the (empty) weight
    with pytest.raises(RuntimeError, match="partitioned"):
        shine.init_memory_from_embeddings()  # a clear error instead of an index error


# ---------------------------------------------------------------------------------------------- --device / --dtype


def test_every_model_command_takes_device_and_dtype():
    parser = build_parser()
    for command in (["quickstart"], ["chat", "--context", "x"], ["eval"], ["demo"],
                    ["train", "--stage", "pretrain", "--data", "d", "--output", "o"]):
        args = parser.parse_args([*command, "--device", "cpu", "--dtype", "bfloat16"])
        assert (args.device, args.dtype) == ("cpu", "bfloat16"), command


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_command_asked_for_cuda_without_one_fails_in_one_line(tmp_path, capsys):
    assert main(["quickstart", "--device", "cuda", "--output", str(tmp_path / "adapter")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_placement_defaults_and_refusals():
    if not torch.cuda.is_available():
        assert resolve_placement() == Placement("cpu", auto_dtype("cpu"))
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_placement("cuda")
    assert resolve_placement("cpu", "bf16") == Placement("cpu", BF16)
    assert resolve_placement("cpu", prefer_bf16=True).dtype == BF16
    with pytest.raises(ValueError, match="banana"):
        resolve_placement("banana")
    assert Placement("cpu", BF16).base_options() == {"dtype": BF16}
    assert Placement("auto-map", BF16).base_options() == {"dtype": BF16, "device_map": "auto"}
    assert Placement("cuda:1", BF16).base_options()["device_map"] == "cuda:1"
    with pytest.raises(ValueError, match="cpu or cuda"):
        training_placement(argparse.Namespace(device="auto-map", dtype="auto"), {})


# ---------------------------------------------------------------------------------------------- skip flag


def _flag_worker(rank: int, world: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["SHINE_TEST_PORT"])
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        grads = [torch.ones(3), torch.full((2,), float("nan") if rank == 1 else 1.0)]
        torch.save(nonfinite_flag(grads), Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_the_skip_decision_is_the_same_on_every_rank(tmp_path):
    """Rank 1 alone sees a NaN gradient shard (as under FSDP/ZeRO): both ranks decide to skip."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        os.environ["SHINE_TEST_PORT"] = str(sock.getsockname()[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.spawn(_flag_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    assert [bool(torch.load(tmp_path / f"rank{r}.pt")) for r in (0, 1)] == [True, True]
    assert not bool(nonfinite_flag([torch.ones(3)]))  # not distributed: the local norm decides
