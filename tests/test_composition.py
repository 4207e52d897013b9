"""Combining LoRAs into one: rank concatenation, weighted mean and SVD truncation, on state dicts and on a PeftModel."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict

from conftest import make_shine
from peft_shine import CompositionError, compose_adapters
from peft_shine.adapters.combine import combine_lora_states, delta_weight, module_prefixes, truncate_lora
from tiny_models import make_tiny_lm


pytestmark = pytest.mark.usefixtures("one_thread")
PREFIX = "base_model.model.layer.q_proj"


def lora_state(rank: int, seed: int, a=None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(rank, 12, generator=generator) if a is None else a
    return {PREFIX + ".lora_A.weight": a, PREFIX + ".lora_B.weight": torch.randn(20, rank, generator=generator)}


def test_cat_is_exactly_the_weighted_sum_and_respects_each_adapters_scaling():
    states = [lora_state(2, 0), lora_state(3, 1), lora_state(1, 2)]
    weights, scalings = [1.0, -0.5, 2.0], [1.0, 4.0, 0.25]  # scaling = lora_alpha / r of each adapter
    combined = combine_lora_states(states, "cat", weights=weights, scalings=scalings)
    expected = sum(w * delta_weight(s, PREFIX, c) for s, w, c in zip(states, weights, scalings))
    assert combined.rank == 6 and combined.errors == {} and combined.max_error == 0.0
    torch.testing.assert_close(delta_weight(combined.state, PREFIX), expected, atol=1e-5, rtol=1e-5)


def test_mean_divides_by_the_sum_of_the_weights():
    states = [lora_state(2, 0), lora_state(2, 1)]
    mean = combine_lora_states(states, "mean", weights=[3.0, 1.0])
    expected = 0.75 * delta_weight(states[0], PREFIX) + 0.25 * delta_weight(states[1], PREFIX)
    torch.testing.assert_close(delta_weight(mean.state, PREFIX), expected, atol=1e-5, rtol=1e-5)
    uniform = combine_lora_states(states, "mean")
    torch.testing.assert_close(delta_weight(uniform.state, PREFIX),
                               0.5 * (delta_weight(states[0], PREFIX) + delta_weight(states[1], PREFIX)))


def test_svd_is_exact_when_the_sum_has_at_most_the_budget_rank():
    shared_rows = torch.randn(2, 12)  # both adapters read the same 2 input directions: the sum has rank 2
    states = [lora_state(2, 0, a=shared_rows), lora_state(2, 1, a=2 * shared_rows)]
    truncated = combine_lora_states(states, "svd", rank=2)
    exact = delta_weight(states[0], PREFIX) + delta_weight(states[1], PREFIX)
    assert truncated.rank == 2 and truncated.state[PREFIX + ".lora_A.weight"].shape == (2, 12)
    assert truncated.max_error < 1e-6
    torch.testing.assert_close(delta_weight(truncated.state, PREFIX), exact, atol=1e-4, rtol=1e-4)


def test_svd_error_is_the_measured_distance_to_the_exact_sum_and_optimal():
    states = [lora_state(3, seed) for seed in range(4)]
    exact = sum(delta_weight(s, PREFIX) for s in states)
    for rank in (1, 4, 8, 12):
        result = combine_lora_states(states, "svd", rank=rank)
        approx = delta_weight(result.state, PREFIX)
        measured = float(torch.linalg.norm(exact - approx) / torch.linalg.norm(exact))
        sigma = torch.linalg.svdvals(exact)
        optimal = float(sigma[rank:].square().sum().sqrt() / sigma.square().sum().sqrt())
        assert result.errors[PREFIX] == pytest.approx(measured, abs=1e-5)
        assert measured == pytest.approx(optimal, abs=1e-5)  # the best rank-k approximation (Eckart-Young)
    assert combine_lora_states(states, "svd", rank=12).max_error < 1e-6  # full concatenated rank: exact


def test_truncating_to_more_than_the_update_rank_pads_with_zero_directions():
    a, b = torch.randn(3, 5), torch.randn(2, 3)  # rank 3 factors of a 2 × 5 update: at most 2 directions
    new_a, new_b, error = truncate_lora(a, b, 3)
    assert new_a.shape == (3, 5) and new_b.shape == (2, 3) and not new_a[2].any() and not new_b[:, 2].any()
    torch.testing.assert_close(new_b @ new_a, b.double() @ a.double(), atol=1e-10, rtol=1e-10)
    assert error < 1e-12


@pytest.mark.parametrize("kwargs, match", [
    ({"rule": "svd", "rank": 5}, "larger than the concatenated rank 4"),
    ({"rule": "svd"}, "needs a positive integer rank budget"),
    ({"rule": "cat", "rank": 2}, "'svd' rule only"),
    ({"rule": "linear"}, "Unknown combination rule"),
    ({"rule": "cat", "weights": [1.0]}, "one weight per adapter"),
    ({"rule": "mean", "weights": [1.0, -1.0]}, "positive sum"),
    ({"rule": "cat", "weights": [1.0, float("nan")]}, "finite"),
])
def test_bad_combinations_are_refused(kwargs, match):
    rule = kwargs.pop("rule")
    with pytest.raises(CompositionError, match=match):
        combine_lora_states([lora_state(2, 0), lora_state(2, 1)], rule, **kwargs)


def test_adapters_of_different_modules_or_no_adapters_are_refused():
    other = {k.replace("q_proj", "v_proj"): v for k, v in lora_state(2, 1).items()}
    with pytest.raises(CompositionError, match="other modules"):
        combine_lora_states([lora_state(2, 0), other])
    with pytest.raises(CompositionError, match="Nothing to combine"):
        combine_lora_states([])
    with pytest.raises(CompositionError, match="exactly one lora_A"):
        module_prefixes({PREFIX + ".lora_A.weight": torch.zeros(1, 1)})


# ------------------------------------------------------------------ adapters loaded on a PeftModel (peft's own path)


@pytest.fixture(scope="module")
def documents():
    """A hypernetwork with two generated adapters (two documents)."""
    shine = make_shine("llama", lora_scale=1.0)
    shine.generate_adapter(["The red lamp is on.", "Paris is the capital of France."], ["doc_a", "doc_b"])
    return shine


def _deltas(model, name, scaling=1.0):
    state = get_peft_model_state_dict(model, adapter_name=name)
    return {p: delta_weight(state, p, scaling) for p in module_prefixes(state)}


@pytest.mark.parametrize("rule, weights, factors", [("cat", None, (1.0, 1.0)), ("cat", [2.0, -1.0], (2.0, -1.0)),
                                                    ("mean", [3.0, 1.0], (0.75, 0.25))])
def test_compose_adapters_is_exact_for_cat_and_mean(documents, rule, weights, factors):
    model, name = documents.peft_model, f"both_{rule}_{len(weights or [])}"
    result = compose_adapters(model, ["doc_a", "doc_b"], name, rule, weights=weights)
    a, b, got = _deltas(model, "doc_a"), _deltas(model, "doc_b"), _deltas(model, name)
    assert result.rank == model.peft_config[name].r == 2 * documents.config.lora_rank
    assert model.active_adapter == name
    for prefix in a:
        torch.testing.assert_close(got[prefix], factors[0] * a[prefix] + factors[1] * b[prefix], atol=1e-6, rtol=1e-4)


def test_compose_adapters_svd_truncates_to_the_budget_and_reports_the_error(documents):
    model = documents.peft_model
    result = compose_adapters(model, ["doc_a", "doc_b"], "both_svd", "svd", rank=2)
    a, b, got = _deltas(model, "doc_a"), _deltas(model, "doc_b"), _deltas(model, "both_svd")
    assert model.peft_config["both_svd"].r == 2 and 0 < result.max_error < 1
    for prefix, error in result.errors.items():
        exact = a[prefix] + b[prefix]
        measured = float(torch.linalg.norm(exact - got[prefix]) / torch.linalg.norm(exact))
        assert measured == pytest.approx(error, abs=1e-3)


def test_composed_adapter_saves_and_reloads_with_plain_peft(documents, tmp_path):
    model = documents.peft_model
    compose_adapters(model, ["doc_a", "doc_b"], "saved", "cat")
    documents.save_adapter(tmp_path / "composed", "saved")
    ids = torch.tensor([[10, 11, 12, 13, 14]])
    with torch.no_grad():
        expected = model(ids).logits
        loaded = PeftModel.from_pretrained(make_tiny_lm("llama"), tmp_path / "composed").eval()
        torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("names, new, rank, match", [
    (["doc_a"], "x", None, "at least two distinct"),
    (["doc_a", "doc_a"], "x", None, "at least two distinct"),
    (["doc_a", "missing"], "x", None, "No adapter named"),
    (["doc_a", "doc_b"], "doc_a", None, "not already loaded"),
    (["doc_a", "doc_b"], "x", 100, "larger than the concatenated"),
])
def test_bad_compositions_change_nothing(documents, names, new, rank, match):
    model = documents.peft_model
    before = {name: _deltas(model, name) for name in ("doc_a", "doc_b")}
    loaded = set(model.peft_config)
    with pytest.raises(CompositionError, match=match):
        compose_adapters(model, names, new, "svd" if rank else "cat", rank=rank)
    assert set(model.peft_config) == loaded
    for name, deltas in before.items():
        for prefix, delta in _deltas(model, name).items():
            assert torch.equal(delta, deltas[prefix])


def test_compose_respects_peft_scaling_of_foreign_adapters():
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(make_tiny_lm("llama"), config, adapter_name="one")
    model.add_adapter("two", LoraConfig(r=2, lora_alpha=1, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False))
    compose_adapters(model, ["one", "two"], "sum", "cat")
    one, two, got = _deltas(model, "one", 4.0), _deltas(model, "two", 0.5), _deltas(model, "sum")
    assert model.peft_config["sum"].r == model.peft_config["sum"].lora_alpha == 6
    for prefix in one:
        torch.testing.assert_close(got[prefix], one[prefix] + two[prefix], atol=1e-6, rtol=1e-4)


def test_accumulator_refuses_more_fewer_or_mismatched_adapters():
    from peft_shine.adapters.combine import LoraAccumulator

    accumulator = LoraAccumulator([2, 2], "cat")
    accumulator.add(lora_state(2, 0))
    with pytest.raises(CompositionError, match="1 of the 2 announced"):
        accumulator.result()
    with pytest.raises(CompositionError, match="rank 3 at"):
        accumulator.add(lora_state(3, 1))
    accumulator.add(lora_state(2, 1))
    with pytest.raises(CompositionError, match="more adapters than the 2 announced"):
        accumulator.add(lora_state(2, 2))
    assert accumulator.result().rank == 4
