"""Whether this CPU multiplies bf16 matrices fast enough for a bf16 base LM to pay, decided at run time.

Machines differ: a CPU with Intel AMX tiles (``amx_bf16``) runs a bf16 matmul several times faster than fp32, one
with AVX-512 BF16 (``avx512_bf16``) about twice as fast, and one without either emulates bf16 and is *slower* than
fp32. So `dtype="auto"` / ``--dtype auto`` never assumes: `cpu_has_fast_bf16` reads the CPU flags and confirms them
with a short timed probe (one matrix product of a decoder-layer MLP's shape in each dtype), once per process.
``SHINE_CPU_BF16=1`` / ``=0`` overrides the decision (reproducible runs, or a machine whose probe is noisy).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import torch


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # matrix units / instructions that make bf16 matmuls fast
MIN_PROBE_SPEEDUP = 1.3  # a bf16 product this much faster than fp32 counts as fast (emulated bf16 is slower)
_OVERRIDE = "SHINE_CPU_BF16"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none, e.g. macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_flags() -> list[str]:
    """Which of `BF16_FLAGS` this CPU reports."""
    return [flag for flag in BF16_FLAGS if flag in cpu_flags()]


def bf16_matmul_speedup(rows: int = 256, inner: int = 576, outer: int = 1536, repeats: int = 3) -> float:
    """fp32 time / bf16 time of one ``(rows, inner) @ (inner, outer)`` product (best of ``repeats`` each, after one
    warm-up): above 1 where bf16 is faster. Takes a few tens of milliseconds."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator)
    b = torch.randn(inner, outer, generator=generator)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        torch.mm(x, y)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(x, y)
            times.append(time.perf_counter() - started)
        return min(times)

    return best(a, b) / best(a.bfloat16(), b.bfloat16())


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether a bf16 base LM runs faster than fp32 on this CPU: a bf16 flag (`BF16_FLAGS`) and a timed probe at
    least `MIN_PROBE_SPEEDUP` faster (`bf16_matmul_speedup`). ``SHINE_CPU_BF16=1``/``0`` decides instead."""
    override = os.environ.get(_OVERRIDE, "").strip()
    if override in ("0", "1"):
        return override == "1"
    return bool(bf16_flags()) and bf16_matmul_speedup() >= MIN_PROBE_SPEEDUP


def auto_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype ``"auto"`` means for a frozen base LM on ``device``: bf16 on a CUDA device that supports it or on
    a CPU with fast bf16 matrix products (`cpu_has_fast_bf16`), else fp32 (fp16 is never chosen silently)."""
    kind = torch.device(device).type if not isinstance(device, torch.device) else device.type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if kind == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32
