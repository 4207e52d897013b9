"""Peak memory of one operation, measured in a fresh process (``python -m benchmarks.memory_probe ...``).

Linux's ``ru_maxrss`` only grows, so each measurement runs alone: load the model, note the peak, run the
operation, report the increase.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from .timing import PeakMemory


def probe(kind: str, tokens: int, hypernetwork: str | None) -> dict:
    from peft_shine.shipped import load_hypernetwork

    from .workloads import context_of_length

    shine = load_hypernetwork(hypernetwork).model
    shine.config.max_context_length = max(shine.config.max_context_length, tokens)
    text = context_of_length(shine.tokenizer, tokens)
    ids, mask = shine.tokenize_contexts(text)
    warm_ids, warm_mask = shine.tokenize_contexts(context_of_length(shine.tokenizer, 16))
    with torch.inference_mode():  # first calls allocate thread pools and workspaces: not the operation's cost
        shine.generate_lora(warm_ids, warm_mask)
        shine.base_lm(warm_ids, use_cache=True, logits_to_keep=1)
    with PeakMemory() as memory:
        if kind == "generate":
            with torch.inference_mode():
                shine.generate_lora(ids, mask)
        elif kind == "prefill":
            with torch.inference_mode():
                shine.base_lm(ids, use_cache=True, logits_to_keep=1)
        elif kind == "train":
            from peft_shine.evaluation.sft import reconstruction_batch

            conversation, labels = reconstruction_batch(shine.tokenizer, context_of_length(shine.tokenizer, 56))
            shine.train()
            shine(context_input_ids=ids, context_attention_mask=mask, input_ids=conversation,
                  labels=labels).loss.backward()
    return {"kind": kind, "context_tokens": int(ids.shape[1]), "before_mib": memory.before_mib,
            "peak_mib": memory.peak_mib, "increase_mib": memory.increase_mib}


def measure(kind: str, tokens: int, hypernetwork: str | None = None) -> dict:
    """Run `probe` in a fresh Python process and return its result."""
    command = [sys.executable, "-m", "benchmarks.memory_probe", kind, str(tokens)]
    if hypernetwork:
        command += ["--hypernetwork", hypernetwork]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["generate", "prefill", "train"])
    parser.add_argument("tokens", type=int)
    parser.add_argument("--hypernetwork", default=None)
    args = parser.parse_args()
    print(json.dumps(probe(args.kind, args.tokens, args.hypernetwork)))
