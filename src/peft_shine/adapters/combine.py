"""Combining several LoRA adapters into one standard peft LoRA: rank concatenation, weighted mean, SVD truncation.

Every rule works on the weight update ``ΔW_i = s_i · B_i A_i`` of each adapter (``s_i = lora_alpha / r`` is peft's
scaling, respected here) and writes a LoRA whose own scaling is 1 (``lora_alpha = r``), like every generated adapter:

* ``"cat"`` — rank concatenation: ``ΔW = Σ w_i ΔW_i`` **exactly** (default ``w_i = 1``: the sum of the updates).
  ``A = [w_1 s_1 A_1; w_2 s_2 A_2; …]`` stacked on the rank axis, ``B = [B_1, B_2, …]``; the rank is ``Σ r_i``
  and grows with the number of adapters.
* ``"mean"`` — weighted mean: ``ΔW = Σ w_i ΔW_i / Σ w_i`` exactly (default: uniform), stored like ``"cat"``
  (rank ``Σ r_i``). peft's ``"linear"`` rule averages the factors instead, which adds cross terms ``B_i A_j``:
  it is not the mean of the updates, so it is not used.
* ``"svd"`` — the ``"cat"`` update (with ``weights``) truncated to a rank budget ``rank ≤ Σ r_i`` by its singular
  value decomposition: the best rank-``rank`` approximation (Eckart–Young), exact when the update's rank is at
  most the budget. The SVD never forms the ``out × in`` matrix: with ``B = Q_b R_b`` and ``Aᵀ = Q_a R_a`` (thin QR),
  ``ΔW = Q_b (R_b R_aᵀ) Q_aᵀ`` and only the small ``Σr × Σr`` core is decomposed (in float64). The relative
  Frobenius error ``‖ΔW − ΔW_k‖ / ‖ΔW‖`` of every module is returned (`CombinedLora.errors`).
  Streamed (`LoraAccumulator.compress` after every few chunks) the truncation is repeated on ``kept + new`` factors,
  so memory stays at the budget rank; the reported error is then ``√(dropped / (kept + dropped))`` over all the
  truncations: exact after a single truncation, an estimate (dropped parts taken as orthogonal) after several.

`combine_lora_states` works on peft state dicts (``….lora_A.weight`` ``(r, in)``, ``….lora_B.weight`` ``(out, r)``);
`peft_shine.adapters.pipeline` uses it for the chunks of one long document (no per-chunk peft adapter is ever
created). `combine_lora_weights` is the same ``"cat"`` / ``"mean"`` combination on the hypernetwork's
`LoraWeights` tensors, differentiable: training on chunked contexts (``chunk_tokens``) combines the chunk LoRAs with
it, so the answer pass sees exactly the adapter `generate_adapter(..., chunking=...)` makes. Adapters already loaded
on a `PeftModel` are combined by `peft_shine.adapters.compose.compose_adapters` with the same rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from peft_shine.errors import CompositionError
from peft_shine.hypernetwork.lora_binding import LoraWeights


RULES = ("cat", "mean", "svd")
STREAM_HEADROOM = 2  # a streamed "svd" keeps this many times the budget rank between inputs, truncated at the end
_A, _B = ".lora_A.weight", ".lora_B.weight"


@dataclass
class CombinedLora:
    """A combined adapter: its peft state dict, its rank, the rule, and for ``"svd"`` the relative Frobenius
    truncation error of each module (``prefix → error``; empty for the exact rules)."""

    state: dict[str, torch.Tensor]
    rank: int
    rule: str
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        """The largest relative truncation error over the modules (0.0 for the exact rules)."""
        return max(self.errors.values(), default=0.0)


def check_rule(rule: str, rank: int | None, concatenated_rank: int | None = None) -> None:
    """Validate a rule and its rank budget (``rank`` only with ``"svd"``, where it is required and at most the
    concatenated rank when that is known). Raises `CompositionError`."""
    if rule not in RULES:
        raise CompositionError(f"Unknown combination rule {rule!r}; choose from {', '.join(RULES)}.")
    if rule != "svd":
        if rank is not None:
            raise CompositionError(f"A rank budget applies to the 'svd' rule only; {rule!r} keeps the concatenated "
                                   f"rank. Use rule='svd' with rank={rank}.")
        return
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise CompositionError(f"The 'svd' rule needs a positive integer rank budget, got {rank!r}.")
    if concatenated_rank is not None and rank > concatenated_rank:
        raise CompositionError(
            f"The rank budget {rank} is larger than the concatenated rank {concatenated_rank} (the sum of the "
            f"adapters' ranks): truncating cannot add rank. Use rank <= {concatenated_rank}, or rule='cat'."
        )


def normalized_weights(rule: str, count: int, weights: Sequence[float] | None) -> list[float]:
    """The weight of each adapter: given ones (finite, one per adapter), else 1; ``"mean"`` divides by their sum."""
    if count < 1:
        raise CompositionError("Nothing to combine: no adapters were given.")
    values = [1.0] * count if weights is None else [float(w) for w in weights]
    if len(values) != count:
        raise CompositionError(f"Got {len(values)} weights for {count} adapters; give one weight per adapter.")
    if not all(math.isfinite(w) for w in values):
        raise CompositionError(f"Weights must be finite numbers, got {values}.")
    if rule == "mean":
        total = sum(values)
        if total <= 0:
            raise CompositionError(f"The 'mean' rule divides by the sum of the weights, which is {total}; give "
                                   f"weights with a positive sum.")
        values = [w / total for w in values]
    return values


def module_prefixes(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The module prefixes of a peft LoRA state dict (keys without ``.lora_A.weight``), in key order."""
    prefixes = [key[: -len(_A)] for key in state if key.endswith(_A)]
    if not prefixes or len(prefixes) * 2 != len(state) or any(p + _B not in state for p in prefixes):
        raise CompositionError("Expected a LoRA state dict holding exactly one lora_A.weight and one lora_B.weight "
                               "per module (no biases, embeddings or DoRA magnitudes).")
    return prefixes


def combine_lora_states(
    states: Sequence[Mapping[str, torch.Tensor]],
    rule: str = "cat",
    *,
    weights: Sequence[float] | None = None,
    scalings: Sequence[float] | None = None,
    rank: int | None = None,
) -> CombinedLora:
    """Combine LoRA state dicts with the same modules into one (see the module docstring for the rules).

    Args:
        states: peft state dicts (``get_peft_model_state_dict`` / `export.peft_state_dict` format).
        rule: ``"cat"``, ``"mean"`` or ``"svd"``.
        weights: one weight per adapter (default 1; ``"mean"`` normalises them to sum 1).
        scalings: each adapter's peft scaling ``lora_alpha / r`` (default 1, what generated adapters use).
        rank: the rank budget of ``"svd"`` (required there, refused elsewhere), at most ``Σ r_i``.

    Returns:
        A `CombinedLora` whose state has the dtype of the first adapter and scaling 1 (``lora_alpha = rank``).
    """
    normalized_weights(rule, len(states), weights)  # "nothing to combine" and bad weights first
    prefixes = module_prefixes(states[0])
    for index, state in enumerate(states[1:], start=1):
        if set(state) != set(states[0]):
            raise CompositionError(f"Adapter {index} adapts other modules than adapter 0; only adapters with the "
                                   f"same target modules can be combined.")
    ranks = [int(state[prefixes[0] + _A].shape[0]) for state in states]
    accumulator = LoraAccumulator(ranks, rule, weights=weights, scalings=scalings, rank=rank)
    for state in states:
        accumulator.add(state)
    return accumulator.result()


class LoraAccumulator:
    """Rank concatenation filled one adapter at a time, so the inputs need not be kept (a long document's chunk
    LoRAs are dropped as they arrive); `result` applies the rule. The ranks, weights and scalings of all inputs are
    given up front (see `combine_lora_states`).

    ``"cat"`` / ``"mean"`` write into factors of the concatenated rank allocated once (the adapter itself, held once).
    ``"svd"`` keeps the inputs added since the last `compress` beside factors of at most ``STREAM_HEADROOM ×`` the
    budget rank: `compress` re-truncates their stack to that rank (QR + SVD of the small core) and `result` to the
    budget, so a caller that compresses after every few inputs holds ``2 × budget + those inputs' ranks``, never the
    concatenated rank. The result is exact while the sum's rank is at most the budget; otherwise a compression may
    drop directions that later inputs would have made stronger than the kept ones, so the streamed truncation can be
    slightly worse than the one-shot truncation of the whole sum (measured in tests/test_long_document_memory.py;
    the headroom makes that rare). Without `compress` the result is that one-shot truncation.
    """

    def __init__(self, ranks: Sequence[int], rule: str = "cat", *, weights: Sequence[float] | None = None,
                 scalings: Sequence[float] | None = None, rank: int | None = None) -> None:
        values = normalized_weights(rule, len(ranks), weights)
        scales = [1.0] * len(ranks) if scalings is None else [float(s) for s in scalings]
        if len(scales) != len(ranks):
            raise CompositionError(f"Got {len(scales)} scalings for {len(ranks)} adapters.")
        check_rule(rule, rank, sum(ranks))
        self.rule, self.rank, self.count = rule, rank, 0
        self.factors = [w * s for w, s in zip(values, scales)]
        self.offsets = [0]
        for value in ranks:
            self.offsets.append(self.offsets[-1] + int(value))
        self.state: dict[str, torch.Tensor] = {}  # "cat"/"mean": the concatenated factors; "svd": the kept ones
        self.pending: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # "svd": (A, B) added since compress
        self.dropped: dict[str, float] = {}  # "svd": squared Frobenius norm of the directions dropped so far
        self.kept: dict[str, float] = {}  # "svd": squared Frobenius norm of the kept factors' update
        self.prefixes: list[str] = []
        self.dtype: torch.dtype | None = None

    def add(self, state: Mapping[str, torch.Tensor]) -> None:
        """Take the next adapter's factors (A scaled by its weight × scaling)."""
        index = self.count
        if index + 1 >= len(self.offsets):
            raise CompositionError(f"Got more adapters than the {len(self.offsets) - 1} announced.")
        if not self.prefixes:
            self.prefixes, self.dtype = module_prefixes(state), state[next(iter(state))].dtype
            if self.rule != "svd":
                self._allocate(state)
        elif set(state) != {p + f for p in self.prefixes for f in (_A, _B)}:
            raise CompositionError(f"Adapter {index} adapts other modules than adapter 0; only adapters with the "
                                   f"same target modules can be combined.")
        low, high = self.offsets[index], self.offsets[index + 1]
        for prefix in self.prefixes:
            if state[prefix + _A].shape[0] != high - low:
                raise CompositionError(f"Adapter {index} has rank {state[prefix + _A].shape[0]} at {prefix}, "
                                       f"announced {high - low}.")
        for prefix in self.prefixes:
            a, b = state[prefix + _A] * self.factors[index], state[prefix + _B]
            if self.rule == "svd":
                self.pending.setdefault(prefix, []).append((a, b))
            else:
                self.state[prefix + _A][low:high] = a
                self.state[prefix + _B][:, low:high] = b
        self.count += 1

    def _allocate(self, state: Mapping[str, torch.Tensor]) -> None:
        """The concatenated factors of ``"cat"`` / ``"mean"``, allocated once, like the first adapter's tensors."""
        total = self.offsets[-1]
        for prefix in self.prefixes:
            a, b = state[prefix + _A], state[prefix + _B]
            self.state[prefix + _A] = a.new_empty(total, a.shape[1])
            self.state[prefix + _B] = b.new_empty(b.shape[0], total)

    def compress(self) -> None:
        """``"svd"``: fold the pending inputs into the kept factors, truncated to the budget when their stacked rank
        exceeds it (else kept as they are: nothing is lost). A no-op for the other rules."""
        if self.rule != "svd" or not self.pending:
            return
        if self.held_rank > STREAM_HEADROOM * self.rank:
            self._truncate_all(STREAM_HEADROOM * self.rank)

    @property
    def held_rank(self) -> int:
        """``"svd"``: the rank of the factors held now (kept + pending; 0 before the first input)."""
        if not self.prefixes:
            return 0
        prefix = self.prefixes[0]
        kept = self.state[prefix + _A].shape[0] if prefix + _A in self.state else 0
        return kept + sum(a.shape[0] for a, _ in self.pending.get(prefix, []))

    def _truncate_all(self, rank: int) -> None:
        """Truncate ``kept + pending`` of every module to ``rank`` (decomposed in float64, kept in the adapters'
        dtype: half the memory of float64 factors for the same rank) and note what was dropped."""
        for prefix in self.prefixes:
            pairs = self.pending.pop(prefix, [])
            if prefix + _A in self.state:
                pairs.insert(0, (self.state[prefix + _A], self.state[prefix + _B]))
            a = torch.cat([pair[0].double() for pair in pairs])
            b = torch.cat([pair[1].double() for pair in pairs], dim=1)
            new_a, new_b, sigma, keep = _truncated_svd(a, b, rank)
            self.state[prefix + _A], self.state[prefix + _B] = new_a.to(self.dtype), new_b.to(self.dtype)
            self.dropped[prefix] = self.dropped.get(prefix, 0.0) + float(sigma[keep:].square().sum())
            self.kept[prefix] = float(sigma[:keep].square().sum())

    def result(self) -> CombinedLora:
        """The combined adapter (``"svd"``: truncated module by module, in place of the concatenation)."""
        if self.count != len(self.offsets) - 1:
            raise CompositionError(f"Got {self.count} of the {len(self.offsets) - 1} announced adapters.")
        if self.rule != "svd":
            return CombinedLora(self.state, self.offsets[-1], self.rule)
        self._truncate_all(self.rank)
        errors, state = {}, {}
        for prefix in self.prefixes:
            kept, dropped = self.kept[prefix], self.dropped[prefix]
            errors[prefix] = math.sqrt(dropped / (kept + dropped)) if kept + dropped > 0 else 0.0
            for suffix in (_A, _B):
                state[prefix + suffix] = self.state[prefix + suffix].to(self.dtype).contiguous()
        self.state = state
        return CombinedLora(state, self.rank, self.rule, errors)


def combine_lora_weights(lora: LoraWeights, owners: Sequence[int] | torch.Tensor, rule: str = "mean") -> LoraWeights:
    """Combine the LoRAs of ``lora`` (one per chunk) into one LoRA per document, differentiably.

    ``owners[i]`` is the document (``0 … documents-1``, each with at least one chunk) of chunk ``i``. Each document's
    chunk factors are concatenated on the rank axis in chunk order, the A side scaled by the rule's weight
    (``"mean"``: ``1/k`` for ``k`` chunks, ``"cat"``: 1), exactly as `LoraAccumulator` does on peft state dicts, so
    the update is the exact mean (sum) of the chunk updates. Documents with fewer chunks are padded with zero rank
    columns (adding nothing) to the batch's largest rank. The scale ``s`` is kept.

    Raises:
        CompositionError: ``"svd"`` (a truncation is not trained through), or owners that do not match the LoRAs.
    """
    if rule == "svd":
        raise CompositionError("The 'svd' rule truncates with an SVD and is not used in training; combine chunk "
                               "LoRAs with 'mean' or 'cat'.")
    check_rule(rule, None)
    owners = [int(owner) for owner in (owners.tolist() if isinstance(owners, torch.Tensor) else owners)]
    if len(owners) != lora.num_loras:
        raise CompositionError(f"Got {len(owners)} chunk owners for {lora.num_loras} chunk LoRAs; give one per LoRA.")
    groups: list[list[int]] = [[] for _ in range(max(owners, default=-1) + 1)]
    for chunk, owner in enumerate(owners):
        if owner < 0:
            raise CompositionError(f"Chunk {chunk} belongs to document {owner}; documents count from 0.")
        groups[owner].append(chunk)
    if not groups or not all(groups):
        raise CompositionError(f"Every document needs at least one chunk; chunk owners {owners} skip one.")
    width = max(len(group) for group in groups)
    pairs = []
    for a, b in lora.pairs:  # a: (chunks, L, in, r), b: (chunks, L, r, out)
        rank, combined_a, combined_b = a.shape[-1], [], []
        for group in groups:
            factors = a.new_tensor(normalized_weights(rule, len(group), None))[:, None, None, None]
            # (k, L, in, r) → (L, in, k·r) and (k, L, r, out) → (L, k·r, out): chunk i owns rank slots i·r … i·r+r-1
            part_a = (a[group] * factors).permute(1, 2, 0, 3).reshape(a.shape[1], a.shape[2], -1)
            part_b = b[group].permute(1, 0, 2, 3).reshape(b.shape[1], -1, b.shape[3])
            missing = (width - len(group)) * rank
            combined_a.append(torch.nn.functional.pad(part_a, (0, missing)))
            combined_b.append(torch.nn.functional.pad(part_b, (0, 0, 0, missing)))
        pairs.append((torch.stack(combined_a), torch.stack(combined_b)))
    return LoraWeights(pairs, scale=lora.scale)


def _truncated_svd(a: torch.Tensor, b: torch.Tensor, rank: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """`truncate_lora`'s factors (float64) with all singular values of ``B @ A`` and how many were kept."""
    q_b, r_b = torch.linalg.qr(b.double())
    q_a, r_a = torch.linalg.qr(a.double().T)
    u, sigma, vh = torch.linalg.svd(r_b @ r_a.T)
    keep = min(rank, sigma.numel())
    root = sigma[:keep].sqrt()
    new_b = torch.zeros(b.shape[0], rank, dtype=torch.float64, device=b.device)
    new_a = torch.zeros(rank, a.shape[1], dtype=torch.float64, device=a.device)
    new_b[:, :keep] = (q_b @ u[:, :keep]) * root
    new_a[:keep] = root[:, None] * (vh[:keep] @ q_a.T)
    return new_a, new_b, sigma, keep


def truncate_lora(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-``rank`` LoRA ``(A', B')`` of the update ``B @ A`` (``A: (R, in)``, ``B: (out, R)``) and the
    relative Frobenius error of the truncation, from the SVD of the ``R × R`` core of two thin QRs (float64).
    Singular values are split evenly (``√σ``) between ``A'`` and ``B'``; missing directions are zero rows."""
    new_a, new_b, sigma, keep = _truncated_svd(a, b, rank)
    total = float(sigma.square().sum())
    error = math.sqrt(float(sigma[keep:].square().sum()) / total) if total > 0 else 0.0
    return new_a, new_b, error


def delta_weight(state: Mapping[str, torch.Tensor], prefix: str, scaling: float = 1.0) -> torch.Tensor:
    """The update ``scaling · B @ A`` of one module of a LoRA state dict, ``(out, in)`` in float64."""
    return scaling * state[prefix + _B].double() @ state[prefix + _A].double()
