"""The GPU check's CPU path: the benchmark's FLOP model against the real architectures' layers (built weightless
on the meta device), a tiny benchmark run writing its JSON, the burst's tokenisation without ``datasets``, and the
shell script's syntax and usage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tiny_models import make_char_tokenizer


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the benchmarks package lives next to src/

from benchmarks.bench_gpu import ARCHITECTURES, forward_flops, layer_matmul_params, main  # noqa: E402
from benchmarks.gpu_burst import encode_examples, read_records  # noqa: E402

from peft_shine.training.data import build_qa_examples  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test of this module runs on one intra-op thread (see conftest.one_thread)."""


def meta_model(name: str):
    fields = dict(ARCHITECTURES[name])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config), config


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_flop_model_counts_the_real_layers(name):
    model, config = meta_model(name)
    layer = model.model.layers[0]
    linear = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))
    assert layer_matmul_params(config) == linear
    body = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and n.endswith("proj.weight"))
    tokens = 100
    attention_free = forward_flops(config, tokens, attended=0)
    assert attention_free == 2 * body * tokens  # dense part: 2 FLOPs per weight per token
    assert forward_flops(config, tokens, logits_tokens=1) - forward_flops(config, tokens) == \
        2 * config.hidden_size * config.vocab_size


def test_tiny_benchmark_on_cpu_writes_its_json(tmp_path):
    output = tmp_path / "bench.json"
    report = main(["--device", "cpu", "--tiny", "--architectures", "Qwen3-0.6B", "Llama-3.2-1B", "--lengths", "32",
                   "--batch", "2", "--train-context", "32", "--train-conversation", "16", "--repeats", "1",
                   "--peak-tflops", "1.0", "--output", str(output)])
    saved = json.loads(output.read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    for result in saved["results"]:
        (generation,) = result["generation"]
        assert generation["generate_s"] > 0 and generation["prefill_s"] > 0
        train = result["training"]
        assert train["tokens_per_s"] > 0 and train["model_tflop_per_step"] > 0
        assert train["mfu"] == pytest.approx(train["achieved_tflops"] / 1.0)
    assert saved["markdown"].count("\n") == 3 and "Qwen3-0.6B" in saved["markdown"]


def test_burst_tokenises_qa_examples_without_datasets():
    tokenizer = make_char_tokenizer()
    records = read_records("squad_sample.jsonl", limit=3, seed=0)
    examples = build_qa_examples(records, tokenizer, 2000, mode="single", num_distractors=1)
    encoded = encode_examples(examples, tokenizer, 2000, 2000)
    assert len(encoded) == len(examples) == 3
    for example in encoded:
        assert len(example["labels"]) == len(example["input_ids"])
        assert any(label != -100 for label in example["labels"]) and example["context_input_ids"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses_and_prints_its_usage():
    script = ROOT / "scripts" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 2 and "run --dry-run" in result.stdout
