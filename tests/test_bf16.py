"""The bf16 CPU path: `dtype="auto"` decided at run time, a bf16 base trains the fp32 hypernetwork in the same
direction as an fp32 base, and a generated adapter's effect survives the bf16 base (real SmolLM2)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import chat_batch, make_shine
from peft_shine.loading import Placement, resolve_placement
from peft_shine.storage import cpu_features
from peft_shine.storage.base_models import load_base_model
from peft_shine.storage.cpu_features import auto_dtype, bf16_matmul_speedup, cpu_has_fast_bf16
from test_modeling import perturb_m2p


BF16 = torch.bfloat16


@pytest.fixture
def decide_bf16(monkeypatch):
    """Set ``SHINE_CPU_BF16`` and forget the cached decision (before and after)."""

    def decide(value: str) -> None:
        monkeypatch.setenv("SHINE_CPU_BF16", value)
        cpu_has_fast_bf16.cache_clear()

    yield decide
    cpu_has_fast_bf16.cache_clear()


def test_auto_dtype_follows_the_cpu_decision(decide_bf16):
    decide_bf16("1")
    assert auto_dtype("cpu") == BF16 and resolve_placement("cpu") == Placement("cpu", BF16)
    decide_bf16("0")
    assert auto_dtype("cpu") == torch.float32 and resolve_placement("cpu") == Placement("cpu", torch.float32)
    assert resolve_placement("cpu", "fp32", prefer_bf16=False).dtype == torch.float32


def test_the_probe_decides_without_an_override(decide_bf16, monkeypatch):
    decide_bf16("")
    assert isinstance(cpu_has_fast_bf16(), bool)  # the probe is timed: its answer depends on the machine
    assert bf16_matmul_speedup(rows=8, inner=16, outer=16, repeats=1) > 0
    monkeypatch.setattr(cpu_features, "bf16_flags", lambda: [])
    cpu_has_fast_bf16.cache_clear()
    assert cpu_has_fast_bf16() is False  # no bf16 flag: never bf16, whatever a probe would say


def test_inference_also_asks_the_one_row_product(decide_bf16, monkeypatch):
    """A CPU with AVX-512 BF16 but no AMX: bf16 products of many rows twice as fast, the one-row product (decoding)
    slower. Training takes bf16, answering keeps fp32."""
    decide_bf16("")
    monkeypatch.setattr(cpu_features, "bf16_flags", lambda: ["avx512_bf16"])
    monkeypatch.setattr(cpu_features, "bf16_matmul_speedup", lambda rows=256, **_: 0.5 if rows == 1 else 2.0)
    assert cpu_has_fast_bf16("training") and not cpu_has_fast_bf16("inference")
    assert auto_dtype("cpu", "training") == BF16 and auto_dtype("cpu") == torch.float32
    assert resolve_placement("cpu", workload="training").dtype == BF16 and resolve_placement("cpu").dtype != BF16
    with pytest.raises(ValueError, match="workload"):
        cpu_has_fast_bf16("serving")


def test_cpu_flags_are_read_from_proc_cpuinfo():
    flags = cpu_features.cpu_flags()
    assert isinstance(flags, frozenset)
    assert set(cpu_features.bf16_flags()) <= flags


def test_load_base_model_auto_resolves_at_run_time(decide_bf16, tmp_path):
    shine = make_shine()
    shine.base_lm.save_pretrained(tmp_path / "base")
    shine.tokenizer.save_pretrained(tmp_path / "base")
    for value, dtype in (("1", BF16), ("0", torch.float32)):
        decide_bf16(value)
        base, _ = load_base_model(tmp_path / "base", dtype="auto")
        assert {p.dtype for p in base.parameters()} == {dtype}


def _hypernetwork_gradient(base_dtype: torch.dtype, tokenizer) -> tuple[torch.Tensor, list[bool]]:
    """The flattened gradient of every hypernetwork parameter after one training loss on a tiny model whose base is
    in ``base_dtype`` (the hypernetwork stays fp32), and which parameters it moves."""
    shine = make_shine(lora_scale=0.05)
    perturb_m2p(shine)
    shine.base_lm.to(base_dtype)
    shine.train()
    ids, mask = shine.tokenize_contexts(["Alice moved to Lyon in 2019.", "Bob's cat is called Tom."])
    conversation, labels = chat_batch(tokenizer, "Where did Alice move?", "Lyon", rows=2)
    shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation, labels=labels).loss.backward()
    assert {p.dtype for p in shine.hypernetwork_parameters()} == {torch.float32}
    parameters = shine.hypernetwork_parameters()
    moved = [p.grad is not None and bool(p.grad.any()) for p in parameters]
    return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in parameters]), moved


def test_a_bf16_base_trains_the_hypernetwork_in_the_fp32_direction(tokenizer):
    (fp32, moved32), (bf16, moved16) = (_hypernetwork_gradient(dtype, tokenizer) for dtype in (torch.float32, BF16))
    assert moved32 == moved16 and sum(moved32) > 3  # the same parameters move
    # measured: cosine 0.993-0.9998 over seeds 0-4 (M2P under bf16 autocast); an SGD update is the gradient
    assert F.cosine_similarity(fp32, bf16, dim=0) > 0.99
    assert 0.9 < (bf16.norm() / fp32.norm()).item() < 1.1


@pytest.mark.integration
def test_a_generated_adapters_effect_survives_a_bf16_base():
    """The generated LoRA is scaled by 1e-3: a single bf16 add of a delta under half a bf16 ulp is rounded away, but
    over the activations the rounding is unbiased, so the adapter's effect on the answer logits survives. Measured on
    12 SQuAD sample questions with the shipped hypernetwork (M2P under bf16 autocast): cosine of the effect (adapter −
    no adapter logits) bf16 vs fp32 0.994-0.9998, answer cross-entropy within 0.05 nats."""
    from peft_shine.prompting import answer_system_message
    from peft_shine.qa_data import bundled_path
    from peft_shine.shipped import load_hypernetwork
    from peft_shine.training.data import conversation_turns

    records = [json.loads(line) for line in bundled_path("squad_sample.jsonl").read_text().splitlines()[3:7]]
    results = {}
    for dtype in (torch.float32, BF16):
        shine = load_hypernetwork(dtype=dtype).model
        rows = []
        with torch.no_grad():
            for record in records:
                lora = shine.generate_lora(*shine.tokenize_contexts(record["context"]))
                messages = [answer_system_message(), {"role": "user", "content": record["question"]},
                            {"role": "assistant", "content": record["answers"][0]}]
                (ids, labels), = conversation_turns(shine.tokenizer, messages)
                ids, labels = torch.tensor([ids]), torch.tensor([labels])
                adapter, targets, _ = shine.answer_logits(lora, ids, labels)
                plain, _, _ = shine.answer_logits(None, ids, labels)
                rows.append((adapter.float(), plain.float(), targets))
        results[dtype] = rows
    for (adapter32, plain32, targets), (adapter16, plain16, _) in zip(results[torch.float32], results[BF16]):
        effect = F.cosine_similarity((adapter32 - plain32).flatten(), (adapter16 - plain16).flatten(), dim=0)
        assert effect > 0.99
        assert abs(F.cross_entropy(adapter32, targets) - F.cross_entropy(adapter16, targets)) < 0.1
