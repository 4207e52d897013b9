"""`generate_adapter` on many contexts in one call: the time must grow linearly with their number.

    python -m benchmarks.bench_many_contexts                 # 10 and 100 contexts on a tiny random Llama (seconds)
    python -m benchmarks.bench_many_contexts --with-1000     # also 1,000 contexts
    python -m benchmarks.bench_many_contexts --delete        # delete_adapters / adapter_scope on 100 to 1,000 adapters
    python -m benchmarks.run --only many_contexts            # the same on the default base, in the benchmark report

Each count runs on a fresh hypernetwork (no adapters yet), so the row measures one call adding ``count`` adapters.
"""

from __future__ import annotations

import argparse
import json
import time


def many_contexts(shine_factory, counts: list[int], batch_size: int = 16) -> list[dict]:
    """Seconds of one ``generate_adapter`` call adding ``count`` new adapters (distinct short contexts), per count,
    on the model ``shine_factory()`` returns; ``per_context_s`` stays flat when the cost is linear."""
    rows = []
    for count in counts:
        shine = shine_factory()
        contexts = [f"Note {index}: the harbour opens at dawn and closes at dusk." for index in range(count)]
        names = [f"n{count}-{index}" for index in range(count)]
        started = time.perf_counter()
        shine.generate_adapter(contexts, adapter_names=names, batch_size=batch_size)
        seconds = time.perf_counter() - started
        rows.append({"contexts": count, "seconds": seconds, "per_context_s": seconds / count})
    return rows


def delete_many(shine_factory, counts: list[int], batch_size: int = 16) -> list[dict]:
    """Seconds of ``delete_adapters`` removing ``count`` adapters at once, and of leaving an ``adapter_scope`` that
    holds ``count`` adapters, per count (adapters generated first, not timed); ``per_adapter_s`` stays flat when the
    cost is linear."""
    rows = []
    for count in counts:
        shine = shine_factory()
        contexts = [f"Note {index}: the harbour opens at dawn and closes at dusk." for index in range(count)]
        names = [f"d{count}-{index}" for index in range(count)]
        shine.generate_adapter(contexts, adapter_names=names, batch_size=batch_size)
        started = time.perf_counter()
        shine.delete_adapters(names)
        deleted = time.perf_counter() - started
        with shine.adapter_scope() as scoped:
            shine.generate_adapter(contexts, adapter_names=names, batch_size=batch_size)
            scoped.extend(names)
            started = time.perf_counter()
        scope = time.perf_counter() - started
        rows.append({"adapters": count, "delete_s": deleted, "scope_exit_s": scope, "per_adapter_s": deleted / count})
    return rows


def tiny_shine():
    """A fresh hypernetwork on a tiny random Llama (built in code, no download) with a character tokenizer."""
    import string

    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from peft_shine import ShineModel

    vocab = {token: index for index, token in enumerate(["<pad>", "<unk>", *string.printable])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")
    config = AutoConfig.for_model("llama", vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=96, max_position_embeddings=512)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config).eval()
    return ShineModel.from_base_model(base, tokenizer, lora_rank=2)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--with-1000", action="store_true", help="also time 1,000 contexts")
    parser.add_argument("--delete", action="store_true", help="time deleting 100 to 1,000 adapters instead")
    args = parser.parse_args(argv)
    if args.delete:
        rows = delete_many(tiny_shine, [100, 200, 400, 1000])
    else:
        rows = many_contexts(tiny_shine, [10, 100, 1000] if args.with_1000 else [10, 100])
    print(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
