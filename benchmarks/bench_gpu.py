"""GPU benchmark of SHINE on real architectures with random weights (no download): adapter-generation latency
against a plain prefill of the same context, bf16 training throughput and model FLOP utilisation, peak memory.

    python -m benchmarks.bench_gpu --device cuda --output bench_gpu.json       # the four architectures
    python -m benchmarks.bench_gpu --device cpu --tiny --output /tmp/b.json    # the same code on tiny shapes

Each base is built from its published config (`ARCHITECTURES`) with random weights, in bf16 on the device; the
hypernetwork (fp32 master weights) is `ShineModel.from_base_model` with the shipped recipe's shape (rank 3, meta-LoRA
rank 8, two M2P layers, all seven projections of every layer). The FLOP model (`step_flops`) is the one written
in docs/gpu.md: a frozen base does the forward and the input-gradient matmuls (2 × forward) in both passes, never
the weight-gradient ones; recomputation (gradient checkpointing) is not counted as model FLOPs.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from peft_shine import ShineModel

from .timing import machine_info


# published configs (config.json of each Hub repo), the fields that shape compute and memory
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "SmolLM2-135M": {"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                     "tie_word_embeddings": True, "rope_theta": 100000.0, "max_position_embeddings": 8192},
    "Qwen3-0.6B": {"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936,
                   "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 40960},
    "Qwen3-1.7B": {"model_type": "qwen3", "hidden_size": 2048, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 6144, "vocab_size": 151936,
                   "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 40960},
    "Llama-3.2-1B": {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                     "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
}
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": 128, "vocab_size": 512}
SHINE_SHAPE = {"lora_rank": 3, "meta_lora_rank": 8, "m2p_num_layers": 2}
CONTEXT_LENGTHS = (512, 2048, 8192)
# dense bf16 peak in TFLOP/s by device-name fragment (vendor data sheets; no sparsity)
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def build_base(name: str, device: str, dtype: torch.dtype, tiny: bool = False) -> torch.nn.Module:
    """A random-weight causal LM of architecture ``name`` (``tiny``: the same family, toy sizes)."""
    fields = dict(ARCHITECTURES[name], **(TINY if tiny else {}))
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.config.name_or_path = f"random-{name}"
    return model.eval()


def layer_matmul_params(config) -> int:
    """Weights of the linear layers of one decoder layer (attention + MLP)."""
    hidden, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv)
    return attention + 3 * hidden * config.intermediate_size


def forward_flops(config, tokens: int, attended: int | None = None, logits_tokens: int = 0) -> float:
    """FLOPs of one forward pass over ``tokens`` causal positions (each attending on average to half of
    ``attended`` keys, default ``tokens``), with the lm_head at ``logits_tokens`` positions."""
    attended = tokens if attended is None else attended
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dense = 2 * layer_matmul_params(config) * config.num_hidden_layers * tokens
    attention = 2 * 2 * config.num_hidden_layers * tokens * (attended / 2) * heads * head_dim
    return dense + attention + 2 * config.hidden_size * config.vocab_size * logits_tokens


def step_flops(shine: ShineModel, batch: int, context: int, conversation: int, labelled: int) -> float:
    """Model FLOPs of one training step: both passes at 2 × forward (forward + input gradients; the base is
    frozen), the M2P and the meta-LoRA at 3 × forward (weight gradients too)."""
    config, slots = shine.base_lm.config, shine.config.num_memory_slots
    pass1 = forward_flops(config, context + slots)
    pass2 = forward_flops(config, conversation, logits_tokens=labelled)
    m2p_params = sum(p.numel() for p in shine.m2p.parameters())
    m2p = 2 * m2p_params * config.num_hidden_layers * slots
    lora = 2 * sum(a.numel() + b.numel() for a, b in zip(shine.meta_lora_A, shine.meta_lora_B)) * (context + slots)
    return batch * (2 * (pass1 + pass2) + 3 * (m2p + lora))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` (device-synchronised) after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def peak_memory(device: str, fn: Callable[[], object]) -> float | None:
    """Peak GPU memory (MiB) allocated while ``fn()`` runs (``None`` off CUDA)."""
    if not device.startswith("cuda"):
        fn()
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() / 2**20


def guarded(fn: Callable[..., dict], *args: Any) -> dict:
    """Run one measurement; an out-of-memory error becomes a result, not a crash."""
    try:
        return fn(*args)
    except torch.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        return {"error": f"out of memory: {str(error).splitlines()[0]}"}


def generation_latency(shine: ShineModel, device: str, length: int, repeats: int) -> dict:
    """Adapter generation (pass 1 + M2P + slicing) against the base's plain prefill of the same context."""
    ids = torch.randint(0, shine.base_lm.config.vocab_size, (1, length), device=device)
    base = shine.base_lm

    @torch.inference_mode()
    def prefill() -> None:
        base(input_ids=ids, use_cache=True, logits_to_keep=1)

    @torch.no_grad()
    def generate() -> None:
        shine.generate_lora(ids)

    result = {"context_tokens": length, "prefill_s": timed(prefill, device, repeats),
              "generate_s": timed(generate, device, repeats), "generate_peak_mib": peak_memory(device, generate)}
    result["generate_over_prefill"] = result["generate_s"] / result["prefill_s"]
    return result


def training_throughput(shine: ShineModel, device: str, batch: int, context: int, conversation: int,
                        steps: int, peak_tflops: float | None) -> dict:
    """Training steps (bf16 autocast on CUDA, fp32 master weights, fused AdamW): tokens/s, model FLOPs, MFU."""
    vocab = shine.base_lm.config.vocab_size
    ctx = torch.randint(0, vocab, (batch, context), device=device)
    conv = torch.randint(0, vocab, (batch, conversation), device=device)
    labels = conv.clone()
    labels[:, : conversation // 2] = -100  # the answer half is labelled, as in a QA conversation
    shine.train()
    params = [p for p in shine.hypernetwork_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6, fused=device.startswith("cuda"))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast(
        "cpu", enabled=False)

    def step() -> None:
        with autocast:
            loss = shine(context_input_ids=ctx, input_ids=conv, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = timed(step, device, steps)
    peak = peak_memory(device, step)
    shine.eval()
    flops = step_flops(shine, batch, context, conversation, labelled=int((labels[:, 1:] != -100).sum()) // batch)
    achieved = flops / seconds / 1e12
    return {"batch": batch, "context_tokens": context, "conversation_tokens": conversation, "step_s": seconds,
            "tokens_per_s": batch * (context + conversation) / seconds, "model_tflop_per_step": flops / 1e12,
            "achieved_tflops": achieved, "mfu": achieved / peak_tflops if peak_tflops else None,
            "train_peak_mib": peak}


def device_peak_tflops(device: str, override: float | None) -> float | None:
    """The bf16 dense peak of the device (``--peak-tflops`` wins); ``None`` when unknown (CPU)."""
    if override or not device.startswith("cuda"):
        return override
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


def bench_architecture(name: str, args: argparse.Namespace, peak_tflops: float | None) -> dict:
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    base = build_base(name, args.device, dtype, tiny=args.tiny)
    longest = max(args.lengths)
    shine = ShineModel.from_base_model(base, None, max_context_length=longest, **SHINE_SHAPE)
    result: dict[str, Any] = {"architecture": name, "tiny": args.tiny, "dtype": args.dtype,
                              "base_parameters": sum(p.numel() for p in base.parameters()),
                              "hypernetwork_parameters": sum(p.numel() for p in shine.hypernetwork_parameters()),
                              "memory_slots": shine.config.num_memory_slots, "generation": []}
    for length in args.lengths:
        result["generation"].append(guarded(generation_latency, shine, args.device, length, args.repeats))
    result["training"] = guarded(training_throughput, shine, args.device, args.batch, args.train_context,
                                 args.train_conversation, args.repeats, peak_tflops)
    return result


def markdown(results: list[dict]) -> str:
    """The README table: one row per architecture."""
    lines = ["| base | generate / prefill at " + " / ".join(f"{r['context_tokens']}" for r in results[0]["generation"]
                                                           if "context_tokens" in r)
             + " tokens | train tokens/s | MFU | train peak MiB |", "| --- | --- | --- | --- | --- |"]
    for result in results:
        ratios = " / ".join(f"{r['generate_s'] * 1e3:.1f} ms ({r['generate_over_prefill']:.2f}×)"
                            if "generate_s" in r else "OOM" for r in result["generation"])
        train = result["training"]
        mfu = f"{train['mfu']:.0%}" if train.get("mfu") is not None else "n/a"
        peak = f"{train['train_peak_mib']:.0f}" if train.get("train_peak_mib") is not None else "n/a"
        tokens = f"{train['tokens_per_s']:.0f}" if "tokens_per_s" in train else "OOM"
        lines.append(f"| {result['architecture']} | {ratios} | {tokens} | {mfu} | {peak} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="the base's dtype")
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--lengths", nargs="+", type=int, default=list(CONTEXT_LENGTHS))
    parser.add_argument("--batch", type=int, default=8, help="training micro-batch")
    parser.add_argument("--train-context", type=int, default=512)
    parser.add_argument("--train-conversation", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="toy sizes of each family (the CPU dry run)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (TFLOP/s)")
    parser.add_argument("--output", default=None, help="JSON results file (also prints the markdown table)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu --tiny for a dry run)")
    torch.manual_seed(0)
    peak = device_peak_tflops(args.device, args.peak_tflops)
    results = []
    for name in args.architectures:
        results.append(bench_architecture(name, args, peak))
        gc.collect()  # the previous architecture's model leaves the GPU before the next is built
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    info = {**machine_info(), "dtype": args.dtype, "device": args.device,
            "device_name": torch.cuda.get_device_name(torch.device(args.device))
            if args.device.startswith("cuda") else "cpu", "bf16_peak_tflops": peak}
    report = {"machine": info, "results": results, "markdown": markdown(results)}
    print(report["markdown"])
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
