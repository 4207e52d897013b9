"""Distillation from the in-context model: the teacher's top-k next-token targets and the KL loss that uses them.

The **teacher** is the frozen base LM with the context in its prompt (the first user turn rewritten with
`prompting.IN_CONTEXT_TEMPLATE`, exactly the in-context baseline of `shine eval`) and no adapter; the **student** is
the base LM with the generated LoRA and the context absent. On every labelled (assistant) token the student is
pulled toward the teacher's next-token distribution, which carries far more signal per context than the one-hot
gold token.

Targets are computed **once** per example by `add_teacher_targets` (a ``datasets.map`` whose output is cached on
disk under a key of the teacher inputs, the base model and ``top_k``), so a training step runs no teacher pass.
Per labelled token the dataset stores the teacher's ``top_k`` token ids and their log-probabilities and, for the
hidden-state matching term (``hidden_layers``), the teacher's residual stream after a few decoder layers (float16).

The loss that uses them, `peft_shine.hypernetwork.losses.topk_kl`, is KL(teacher ‖ student) over the top-k tokens and one tail
bucket.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from peft_shine.errors import ConfigError, UnsupportedModelError
from peft_shine.hypernetwork.layout import find_decoder_layers
from peft_shine.hypernetwork.lora_binding import capture_layer_outputs
from peft_shine.hypernetwork.losses import labelled_positions
from peft_shine.prompting import IN_CONTEXT_TEMPLATE, build_prompt, generate_answers
from peft_shine.storage.io_utils import atomic_write_text
from peft_shine.training.collate import right_pad
from peft_shine.training.data import IGNORE_INDEX, conversation_turns


TEACHER_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs")
HIDDEN_COLUMN = "teacher_hidden"


# ---------------------------------------------------------------------------------------------- teacher inputs


def teacher_messages(context: str, messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The teacher's conversation: ``messages`` with the context placed in the first user turn (the in-context
    prompt of `prompting.build_prompt`)."""
    result = [dict(message) for message in messages]
    first_user = next(i for i, message in enumerate(result) if message["role"] == "user")
    result[first_user]["content"] = IN_CONTEXT_TEMPLATE.format(context=context, question=result[first_user]["content"])
    return result


def kept_messages(messages: Sequence[dict[str, str]], answered_turns: int) -> list[dict[str, str]]:
    """The leading system turn (if any) and the first ``answered_turns`` user/assistant exchanges."""
    system = list(messages[:1]) if messages and messages[0]["role"] == "system" else []
    return system + list(messages[len(system): len(system) + 2 * answered_turns])


def read_context(text: str, num_tokens: int, tokenizer: PreTrainedTokenizerBase) -> str:
    """The part of ``text`` covered by its first ``num_tokens`` tokens (the context the hypernetwork reads)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text if num_tokens >= len(offsets) else text[: offsets[num_tokens - 1][1]]


def encode_teacher(example: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[int]]:
    """Teacher ``input_ids``/``labels`` for a tokenised example that kept its raw ``messages``.

    The teacher reads the context the student's hypernetwork read (the text of its first ``len(context_input_ids)``
    tokens) and the exchanges the student kept. Raises `ValueError` if the labelled tokens differ from the student's (they must be the same tokens, in
    the same order, for the targets to line up).
    """
    student_labels = [t for t in example["labels"] if t != IGNORE_INDEX]
    turns = sum(1 for m in example["messages"] if m["role"] == "assistant") - example["dropped_turns"]
    context = read_context(example["context"], len(example["context_input_ids"]), tokenizer)
    messages = teacher_messages(context, kept_messages(example["messages"], turns))
    input_ids, labels = [], []
    for turn_ids, turn_labels in conversation_turns(tokenizer, messages):
        input_ids += turn_ids
        labels += turn_labels
    if [t for t in labels if t != IGNORE_INDEX] != student_labels:
        raise UnsupportedModelError("The teacher conversation's answer tokens differ from the student's; the chat "
                                    "template must render answers independently of the user turns.")
    return {"teacher_input_ids": input_ids, "teacher_labels": labels}


# ---------------------------------------------------------------------------------------------- teacher targets


@torch.no_grad()
def teacher_topk(base_lm: PreTrainedModel, input_ids: list[list[int]], labels: list[list[int]], pad_id: int,
                 top_k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(ids, logprobs)`` of shape ``(labelled tokens, top_k)`` per row: the base LM's top-k next-token
    distribution at every position whose next token is labelled (no adapter is active on ``base_lm``)."""
    device = next(base_lm.parameters()).device
    ids = right_pad(input_ids, pad_id).to(device)
    mask = right_pad([[1] * len(row) for row in input_ids], 0).to(device)
    label_tensor = right_pad(labels, IGNORE_INDEX).to(device)
    keep = labelled_positions(label_tensor)
    logits = base_lm(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
    logprobs = F.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
    values, indices = logprobs.topk(top_k, dim=-1)
    counts = keep.sum(-1).tolist()
    return list(zip(indices.cpu().split(counts), values.cpu().split(counts)))


def hidden_layer_indices(num_layers: int, count: int) -> list[int]:
    """``count`` evenly spaced decoder layers ending at the last one (e.g. 30 layers, 6 → 4, 9, 14, 19, 24, 29)."""
    return sorted({max(0, round((i + 1) * num_layers / count) - 1) for i in range(count)})


def answer_hidden(captured: dict[int, torch.Tensor], indices: Sequence[int], labels: torch.Tensor) -> torch.Tensor:
    """The captured states at every position whose next token is labelled, ``(tokens, layers, hidden)`` in batch
    order (the order of the top-k targets and of `ShineModel.answer_logits`)."""
    keep = labelled_positions(labels)
    return torch.stack([captured[i][keep.to(captured[i].device)] for i in indices], dim=1)


def teacher_cache_key(dataset, base_lm: PreTrainedModel, top_k: int, hidden_layers: Sequence[int] = ()) -> str:
    """A key of everything the targets depend on: the teacher token ids and labels, the base model, ``top_k`` and
    the matched ``hidden_layers`` (absent from the key when none, so top-k-only caches keep their key)."""
    spec = {"top_k": top_k, "base": base_lm.config.name_or_path,
            "params": sum(p.numel() for p in base_lm.parameters())}
    digest = hashlib.sha256(json.dumps({**spec, "hidden": list(hidden_layers)} if hidden_layers else spec).encode())
    for ids, labels in zip(dataset["teacher_input_ids"], dataset["teacher_labels"]):
        digest.update(json.dumps([ids, labels]).encode())
    return digest.hexdigest()[:20]


def add_teacher_targets(dataset, base_lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, top_k: int = 16,
                        batch_size: int = 4, cache_dir: str | Path | None = None, peft_disabled=None,
                        hidden_layers: Sequence[int] = ()):
    """Add ``teacher_topk_ids`` / ``teacher_topk_logprobs`` to a tokenised dataset that kept its raw ``context`` /
    ``messages`` columns (`data.tokenize_examples` with ``keep_raw=True``); the raw columns are removed. With
    ``hidden_layers`` (decoder layer indices) the same teacher pass also stores ``teacher_hidden``, the residual
    stream after those layers at every labelled position, ``(tokens, layers, hidden)`` in float16.

    With ``cache_dir`` the result is written to ``{cache_dir}/teacher-{key}.arrow`` and reused by later runs (and
    by the other processes of a multi-process run) whose teacher inputs, base model and ``top_k`` are the same.
    ``peft_disabled``: a context manager factory that switches generated adapters off while the teacher runs.
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with_inputs = dataset.map(encode_teacher, fn_kwargs={"tokenizer": tokenizer}, desc="Teacher prompts",
                              remove_columns=["context", "messages"])
    key = teacher_cache_key(with_inputs, base_lm, top_k, hidden_layers)
    cache_file = None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        cache_file = str(Path(cache_dir) / f"teacher-{key}.arrow")

    def targets(batch: dict[str, list]) -> dict[str, list]:
        with peft_disabled() if peft_disabled is not None else torch.no_grad(), \
                capture_layer_outputs(find_decoder_layers(base_lm)[1], hidden_layers) as captured:
            rows = teacher_topk(base_lm, batch["teacher_input_ids"], batch["teacher_labels"], pad_id, top_k)
        result = {"teacher_topk_ids": [ids.tolist() for ids, _ in rows],
                  "teacher_topk_logprobs": [values.tolist() for _, values in rows]}
        if hidden_layers:
            states = answer_hidden(captured, hidden_layers, right_pad(batch["teacher_labels"], IGNORE_INDEX))
            counts = [len(ids) for ids, _ in rows]
            result[HIDDEN_COLUMN] = [part.half().cpu().numpy() for part in states.split(counts)]
        return result

    return with_inputs.map(targets, batched=True, batch_size=batch_size, desc="Teacher top-k targets",
                           remove_columns=["teacher_input_ids", "teacher_labels", "dropped_turns"],
                           cache_file_name=cache_file, load_from_cache_file=cache_file is not None,
                           new_fingerprint=key)  # explicit: datasets would otherwise try to hash the model


# ---------------------------------------------------------------------------------------------- teacher answers


def with_teacher_answers(records: list, base_lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                         cache_dir: str | Path, batch_size: int = 4, max_new_tokens: int = 32,
                         peft_disabled=None) -> list:
    """QA records whose first answer is the teacher's own greedy answer (context in the prompt, the in-context
    baseline of `shine eval`), the gold answers kept after it. Answers are cached in
    ``{cache_dir}/teacher-answers.json`` (keyed by context and question) and only missing ones are generated."""
    cache_path = Path(cache_dir) / "teacher-answers.json"
    cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.is_file() else {}
    keys = [hashlib.sha256(f"{r.context}\n\n{r.question}".encode()).hexdigest()[:24] for r in records]
    todo = [keys.index(key) for key in dict.fromkeys(keys) if key not in cache]  # one row per missing key
    for start in tqdm(range(0, len(todo), batch_size), desc="Teacher answers", disable=not todo):
        chunk = todo[start: start + batch_size]
        prompts = [build_prompt(tokenizer, records[i].question, records[i].context) for i in chunk]
        with peft_disabled() if peft_disabled is not None else torch.no_grad():
            answers = generate_answers(base_lm, tokenizer, prompts, max_new_tokens=max_new_tokens)
        cache.update({keys[i]: answer for i, answer in zip(chunk, answers)})
    if todo:
        atomic_write_text(cache_path, json.dumps(cache, indent=0))
    return [replace(r, answers=(cache[key] or r.answers[0], *r.answers)) for r, key in zip(records, keys)]
