"""Peak memory and time of chunked adapter generation against the base model's plain prefill, 512 → 32K tokens.

    python -m benchmarks.bench_long_context [--lengths 512,1024,...] [--prefill-max 8192] [--output FILE.json]
    python -m benchmarks.bench_long_context --chunk-batches   # seconds at 1, 2, 4, 8 chunks per pass, 4K tokens

Every measurement runs in a fresh Python process (``python -m benchmarks.bench_long_context --probe ...``): load the
shipped hypernetwork and its base, read every weight once (`timing.read_every_weight`: the base's weights are
memory-mapped and would otherwise become resident during the measurement, an embedding row per new token), warm up
on a short text, then sample the resident memory (RSS, every 2 ms:
`timing.PeakMemory`) around one operation and report the peak increase over the memory just before it:

* ``chunked``: ``shine.generate_adapter(text, chunking=ChunkingConfig(512, combine=...), batch_size=B)`` — the
  whole path: chunking, batched encoding, combination and loading into peft;
* ``chunked``, pinned: the same after `peft_shine.return_large_allocations_to_os` (glibc's mmap threshold pinned
  at 4 MiB, so freed working tensors go back to the OS instead of staying in the heap);
* ``prefill``: ``base_lm(ids, use_cache=True, logits_to_keep=1)`` — reading the same text into the base with the
  KV cache that answering from it needs (SmolLM2-135M has 8,192 positions: longer prefills are not measured).

For chunked generation the peak is also reported minus the bytes of the adapter it returns (``adapter_mib``: the
output, which ``cat`` / ``mean`` make grow with the document), so that the working memory's flatness shows.
Seconds are recorded in the JSON rows but not in the table (they mean little on a shared machine).

The text is real prose: the bundled WikiText paragraphs, repeated as often as needed and cut to the length.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from .timing import PeakMemory, interleaved_medians, read_every_weight


PINNED_THRESHOLD_MIB = 4  # the pinned rows: every block of 4 MiB or more mapped and returned at free


def prose(tokenizer, tokens: int) -> str:
    """The bundled WikiText paragraphs, repeated as often as needed, cut to exactly ``tokens`` tokens."""
    from peft_shine.qa_data import bundled_path

    with open(bundled_path("wikitext_sample.jsonl"), encoding="utf-8") as handle:
        paragraphs = [json.loads(line)["text"] + "\n\n" for line in handle]
    ids: list[int] = []
    while len(ids) < tokens:
        for paragraph in paragraphs:
            ids += tokenizer(paragraph, add_special_tokens=False).input_ids
            if len(ids) >= tokens:
                break
    text = tokenizer.decode(ids[:tokens])
    while len(tokenizer(text, add_special_tokens=False).input_ids) > tokens:  # decode/encode may not round-trip
        text = text[: text.rstrip().rfind(" ")]
    return text


def probe(kind: str, tokens: int, combine: str, rank: int | None, batch_size: int, pinned: bool = False) -> dict:
    """One measurement in this process (see the module docstring); ``pinned``: with
    `peft_shine.return_large_allocations_to_os` set first."""
    from peft_shine.adapters.memory import return_large_allocations_to_os
    from peft_shine.adapters.pipeline import ChunkingConfig
    from peft_shine.adapters.store import tuner_layers
    from peft_shine.shipped import load_hypernetwork

    torch.set_num_threads(1)
    if pinned:
        return_large_allocations_to_os(PINNED_THRESHOLD_MIB)
    shine = load_hypernetwork(None).model
    text = prose(shine.tokenizer, tokens)
    ids = shine.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    read_every_weight(shine, shine.base_lm)
    chunking = ChunkingConfig(512, combine=combine, rank=rank)
    if kind == "chunked":  # first calls allocate thread pools, workspaces and the PeftModel: not the operation's
        shine.generate_adapter(prose(shine.tokenizer, 64), "warm-up", chunking=ChunkingConfig(512))
    else:
        with torch.inference_mode():
            shine.base_lm(ids[:, :16], use_cache=True, logits_to_keep=1)
    started = time.perf_counter()
    with PeakMemory() as memory:
        if kind == "chunked":
            shine.generate_adapter(text, "document", chunking=chunking, batch_size=batch_size)
        else:
            with torch.inference_mode():
                shine.base_lm(ids, use_cache=True, logits_to_keep=1)
    seconds = time.perf_counter() - started
    info = shine.adapter_info.get("document", {}) if kind == "chunked" else {}
    adapter_bytes = sum(module["document"].weight.nbytes for layer in tuner_layers(shine.base_lm)
                        for module in (layer.lora_A, layer.lora_B) if "document" in module)
    return {"kind": kind, "tokens": int(ids.shape[1]), "combine": combine if kind == "chunked" else None,
            "batch_size": batch_size if kind == "chunked" else None, "pinned": pinned,
            "chunks": len(info.get("chunk_tokens", [])),
            "rank": info.get("rank"), "svd_max_error": info.get("svd_max_error"), "seconds": round(seconds, 2),
            "before_mib": round(memory.before_mib, 1),
            "increase_mib": round(memory.increase_mib, 1), "adapter_mib": round(adapter_bytes / 2**20, 1)}


def measure(kind: str, tokens: int, combine: str = "cat", rank: int | None = None, batch_size: int = 4,
            pinned: bool = False) -> dict:
    """`probe` in a fresh Python process (peak RSS only grows within a process)."""
    command = [sys.executable, "-m", "benchmarks.bench_long_context", "--probe", kind, str(tokens), combine,
               str(rank or 0), str(batch_size)] + (["--pinned"] if pinned else [])
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    """One line per length: prefill and each chunked rule as ``peak MiB / peak − adapter MiB``."""
    lengths = sorted({row["tokens"] for row in rows})
    variants = list(dict.fromkeys((r["combine"], r["rank"] if r["combine"] == "svd" else None, r["batch_size"],
                                   r.get("pinned", False)) for r in rows if r["kind"] == "chunked"))
    names = [f"{c}{f' r={k}' if k else ''} b={b}{', pinned' if p else ''}" for c, k, b, p in variants]
    lines = ["| tokens | chunks | prefill MiB | " + " | ".join(f"{n}: peak / minus adapter MiB" for n in names) + " |",
             "|---:|---:|---:|" + "---:|" * len(names)]
    for length in lengths:
        prefill = next((r for r in rows if r["kind"] == "prefill" and r["tokens"] == length), None)
        cells, chunks = [], ""
        for combine, rank, batch, pinned in variants:
            row = next((r for r in rows if r["kind"] == "chunked" and r["tokens"] == length and r["combine"] == combine
                        and r["batch_size"] == batch and (combine != "svd" or r["rank"] == rank)
                        and r.get("pinned", False) == pinned), None)
            cells.append("—" if row is None else
                         f"{row['increase_mib']:.0f} / {row['increase_mib'] - row['adapter_mib']:.0f}")
            chunks = str(row["chunks"]) if row else chunks
        first = "—" if prefill is None else f"{prefill['increase_mib']:.0f}"
        lines.append(f"| {length} | {chunks} | {first} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def long_context_rows(lengths: list[int], svd_rank: int = 16, batch_size: int = 4,
                      prefill_max: int = 8192) -> list[dict]:
    """Every measurement of the table, each in a fresh process: per length the ``mean`` and ``cat`` rules, ``svd``
    at rank ``svd_rank`` from 4K tokens on (a budget above the concatenated rank is refused), ``mean`` and ``svd``
    again with the mmap threshold pinned (`peft_shine.return_large_allocations_to_os`), ``mean`` with one chunk
    per pass, and the base's prefill up to ``prefill_max`` tokens."""
    rows = []
    for length in lengths:
        for combine in ("mean", "cat"):
            rows.append(measure("chunked", length, combine, batch_size=batch_size))
        rows.append(measure("chunked", length, "mean", batch_size=batch_size, pinned=True))
        if batch_size > 1:
            rows.append(measure("chunked", length, "mean", batch_size=1))
        if svd_rank and length >= 4096:
            rows.append(measure("chunked", length, "svd", svd_rank, batch_size))
            rows.append(measure("chunked", length, "svd", svd_rank, batch_size, pinned=True))
        if length <= prefill_max:
            rows.append(measure("prefill", length))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def chunk_batch_seconds(shine, tokens: int = 4096, batch_sizes: tuple[int, ...] = (1, 2, 4, 8),
                        repeats: int = 2) -> list[dict]:
    """Seconds of chunked ``generate_adapter`` on ``tokens`` of prose at each number of chunks per encoder pass,
    timed in turns (`timing.interleaved_medians`), in this process and with its torch threads: the measurement
    behind the default of one chunk per pass on a CPU."""
    from peft_shine.adapters.pipeline import ChunkingConfig

    text, chunking = prose(shine.tokenizer, tokens), ChunkingConfig(512)
    runs = {size: (lambda size=size: shine.generate_adapter(text, "chunk_batch", chunking=chunking, batch_size=size))
            for size in batch_sizes}
    seconds = interleaved_medians(runs, repeats=repeats)
    shine.delete_adapters("chunk_batch")
    fastest = min(seconds.values())
    return [{"tokens": tokens, "chunks_per_pass": size, "threads": torch.get_num_threads(),
             "seconds": round(value, 2), "vs_fastest": round(value / fastest, 3)} for size, value in seconds.items()]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--prefill-max", type=int, default=8192, help="longest plain prefill measured")
    parser.add_argument("--svd-rank", type=int, default=16, help="rank budget of the svd measurement (0 = skip)")
    parser.add_argument("--batch-size", type=int, default=4, help="chunks encoded per forward pass")
    parser.add_argument("--output", default=None, help="also write the rows as JSON")
    parser.add_argument("--chunk-batches", action="store_true",
                        help="only time 4K tokens at 1, 2, 4 and 8 chunks per pass (this process's torch threads)")
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", nargs=5, metavar=("KIND", "TOKENS", "COMBINE", "RANK", "BATCH"), default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        kind, tokens, combine, rank, batch = args.probe
        print(json.dumps(probe(kind, int(tokens), combine, int(rank) or None, int(batch), args.pinned)))
        return []
    if args.chunk_batches:
        from peft_shine.shipped import load_hypernetwork

        rows = chunk_batch_seconds(load_hypernetwork(None).model)
        print("\n".join(json.dumps(row) for row in rows))
        return rows
    rows = long_context_rows([int(n) for n in args.lengths.split(",")], args.svd_rank, args.batch_size,
                             args.prefill_max)
    print(markdown(rows))
    if args.output:
        from peft_shine.storage.io_utils import atomic_write_text

        atomic_write_text(args.output, json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
