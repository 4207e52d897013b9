"""What evaluation during training measures: held-out answer losses with the generated adapter and its controls,
and whether the adapters tell their contexts apart.

* `held_out_losses`: the adapter, no adapter, and the adapter of another context of the batch (wrong context);
* `adapter_discrimination`: each held-out conversation's answer loss under **every** held-out context's adapter:
  the share whose own adapter is the most likely (own-adapter top-1 rate; chance is one over the contexts) and
  the mean margin to the best other adapter;
* `mean_pairwise_cosine`: the cosine between the generated weight updates ``A @ B`` (all modules and layers
  flattened) of different contexts, computed from rank-r Gram products without materialising an update: near 1
  when every adapter is the same universal one.

`held_out_metrics` runs them over an evaluation dataloader (few contexts: cheap enough for every evaluation).
"""

from __future__ import annotations

import torch

from peft_shine.hypernetwork.lora_binding import LoraWeights
from peft_shine.hypernetwork.losses import labelled_positions, per_context_mean, topk_kl
from peft_shine.modeling_shine import ShineModel


@torch.no_grad()
def held_out_losses(shine: ShineModel, batch: dict[str, torch.Tensor], controls: bool = True,
                    chunk_combine: str = "mean") -> torch.Tensor:
    """Summed answer-pass scores, shape ``(3, 3)``: rows are the generated adapter, no adapter and the adapter of a
    different context (the context batch rolled by one — for chunked contexts each example's chunks moved to the
    next example; zero for a single row); columns are the summed
    cross-entropy, the labelled-token count and, when the batch carries teacher targets, the summed distillation KL
    to the in-context teacher (else 0)."""
    result = torch.zeros(3, 3, dtype=torch.float64)
    has_teacher = "teacher_topk_ids" in batch
    weights = (1.0, 1.0 if has_teacher else 0.0)

    def scores(output) -> torch.Tensor:
        kd = output.kd_sum if output.kd_sum is not None else torch.zeros(())
        return torch.stack([output.ce_sum.double().cpu(), output.num_label_tokens.double().cpu(), kd.double().cpu()])

    owners = batch.get("context_chunk_owner")

    def run(inputs: dict) -> torch.Tensor:  # chunk_combine is read only when the batch has chunk owners
        return scores(shine(**inputs, num_items_in_batch=1, loss_weights=weights, chunk_combine=chunk_combine))

    result[0] = run(batch)
    if not controls:
        return result
    result[1] = no_adapter_scores(shine, batch)
    if owners is not None and batch["labels"].shape[0] > 1:
        rolled = {**batch, "context_chunk_owner": (owners + 1) % batch["labels"].shape[0]}
        result[2] = run(rolled)
    elif owners is None and batch["context_input_ids"].shape[0] > 1:
        rolled = {**batch, "context_input_ids": batch["context_input_ids"].roll(1, 0),
                  "context_attention_mask": batch["context_attention_mask"].roll(1, 0)}
        result[2] = run(rolled)
    return result


def no_adapter_scores(shine: ShineModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[summed cross-entropy, labelled tokens, summed KL to the teacher (0 without targets)]`` of the base LM
    alone on the batch's conversations."""
    logits, targets, _ = shine.answer_logits(None, batch["input_ids"], batch["labels"], batch["attention_mask"])
    logits = logits.float()
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    kd = (topk_kl(logits, batch["teacher_topk_ids"], batch["teacher_topk_logprobs"]).sum()
          if "teacher_topk_ids" in batch else torch.zeros(()))
    return torch.stack([ce.double(), torch.tensor(float(targets.numel()), dtype=torch.float64), kd.double()]).cpu()



def mean_pairwise_cosine(loras: list[LoraWeights]) -> float | None:
    """Mean cosine over pairs of the flattened weight updates ``A @ B`` (every module and layer) of ``loras`` (one
    LoRA each). ``<A₁B₁, A₂B₂> = Σ (A₁ᵀA₂) ⊙ (B₁B₂ᵀ)`` over the r × r products: no update is materialised.
    ``None`` for fewer than two."""
    if len(loras) < 2:
        return None
    gram = 0.0
    for module in range(len(loras[0].pairs)):
        a = torch.cat([lora.pairs[module][0] for lora in loras]).double()  # (n, layers, in, r)
        b = torch.cat([lora.pairs[module][1] for lora in loras]).double()  # (n, layers, r, out)
        gram = gram + (torch.einsum("ilnr,jlns->ijlrs", a, a) * torch.einsum("ilro,jlso->ijlrs", b, b)).sum((2, 3, 4))
    norms = gram.diagonal().clamp(min=1e-300).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :])
    upper = torch.triu_indices(len(loras), len(loras), offset=1)
    return cosine[upper[0], upper[1]].mean().item()


def keep_rows(labels: torch.Tensor) -> torch.Tensor:
    """The rows of a batch with at least one labelled token."""
    return labelled_positions(labels).any(-1).cpu()


@torch.no_grad()
def adapter_discrimination(shine: ShineModel, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Own-adapter top-1 rate and mean margin (nats per token, best other minus own) of every conversation of
    ``batches`` (unchunked; ``k`` rows per context allowed) among the adapters of all their contexts, and the
    adapters' `mean_pairwise_cosine`."""
    loras, owners = [], []
    for batch in batches:
        lora = shine.generate_lora(batch["context_input_ids"], batch["context_attention_mask"])
        per_context = batch["labels"].shape[0] // lora.num_loras
        owners.append(len(loras) + torch.arange(batch["labels"].shape[0]) // per_context)
        loras += [LoraWeights([(a[i:i + 1], b[i:i + 1]) for a, b in lora.pairs], lora.scale)
                  for i in range(lora.num_loras)]
    nll = []  # per batch: (rows, adapters)
    for batch in batches:
        rows = batch["labels"].shape[0]
        columns = []
        for lora in loras:
            logits, targets, keep = shine.answer_logits(lora, batch["input_ids"], batch["labels"],
                                                        batch["attention_mask"])
            ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
            columns.append(per_context_mean(ce, keep.nonzero()[:, 0], rows).cpu())
        nll.append(torch.stack(columns, dim=1))
    labelled = torch.cat([keep_rows(batch["labels"]) for batch in batches])  # separate-QA fillers have no labels
    nll, own = torch.cat(nll)[labelled], torch.cat(owners)[labelled]
    if nll.shape[1] < 2:
        return {}
    own_nll = nll.gather(1, own[:, None])[:, 0]
    others = nll.scatter(1, own[:, None], float("inf")).min(dim=1).values
    return {"own_adapter_top1": (own_nll < others).double().mean().item(),
            "own_adapter_margin": (others - own_nll).mean().item(),
            "adapter_cosine": mean_pairwise_cosine(loras)}


def leading_batches(batches: list[dict[str, torch.Tensor]], contexts: int) -> list[dict[str, torch.Tensor]]:
    """The first batches holding ``contexts`` contexts (the last one may bring up to a batch more): what
    `adapter_discrimination` scores, so its cost (contexts² answer passes) does not grow with the held-out set."""
    chosen, count = [], 0
    for batch in batches:
        if count >= contexts:
            break
        chosen.append(batch)
        count += batch["context_input_ids"].shape[0]
    return chosen


def held_out_metrics(shine: ShineModel, batches: list[dict[str, torch.Tensor]], controls: bool, chunk_combine: str,
                     reduce, prefix: str, discrimination: bool = True,
                     discrimination_contexts: int = 16) -> dict[str, float]:
    """The evaluation metrics of ``batches`` (on this process; ``reduce`` sums a tensor over processes):
    ``{prefix}_loss`` (token-weighted), with ``controls`` ``_no_adapter`` / ``_wrong_context`` (and ``{prefix}_kd...``
    with teacher targets), and with ``discrimination`` the `adapter_discrimination` values of this process's first
    ``discrimination_contexts`` contexts (`leading_batches`; unchunked batches only)."""
    totals = torch.zeros(3, 3, dtype=torch.float64)
    for batch in batches:
        totals += held_out_losses(shine, batch, controls, chunk_combine)
    totals = reduce(totals)
    has_teacher = bool(batches) and "teacher_topk_ids" in batches[0]
    metrics = {}
    for i, suffix in enumerate(["", "_no_adapter", "_wrong_context"][: 3 if controls else 1]):
        if totals[i, 1] > 0:
            metrics[f"{prefix}_loss{suffix}"] = (totals[i, 0] / totals[i, 1]).item()
            if has_teacher:
                metrics[f"{prefix}_kd{suffix}"] = (totals[i, 2] / totals[i, 1]).item()
    if discrimination and batches and all("context_chunk_owner" not in batch for batch in batches):
        scored = leading_batches(batches, discrimination_contexts)
        metrics.update({f"{prefix}_{name}": value for name, value in adapter_discrimination(shine, scored).items()
                        if value is not None})
    return metrics
