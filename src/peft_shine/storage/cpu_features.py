"""Whether this CPU multiplies bf16 matrices fast enough for a bf16 base LM to pay, decided at run time.

Machines differ: a CPU with Intel AMX tiles (``amx_bf16``) runs a bf16 matmul several times faster than fp32, one
with AVX-512 BF16 (``avx512_bf16``) about twice as fast, and one without either emulates bf16 and is *slower* than
fp32. So `dtype="auto"` / ``--dtype auto`` never assumes: `cpu_has_fast_bf16` reads the CPU flags and confirms them
with a short timed probe, once per process and workload: for **training** (and adapter generation) a product of 256
rows by a decoder-layer MLP's weight; for **inference**, which also decodes answers one token at a time, the
one-row product as well (a CPU with AVX-512 BF16 but no AMX can run the one-row bf16 product several times slower
than fp32, so answering would lose more than generation gains). ``SHINE_CPU_BF16=1`` / ``=0`` overrides the decision
(reproducible runs, or a machine whose probe is noisy).
"""

from __future__ import annotations

import functools
import os
import time

import torch

from peft_shine.errors import ConfigError
from peft_shine.storage.cpu_flags import BF16_FLAGS, bf16_flags, cpu_flags  # noqa: F401 (re-exported)


MIN_PROBE_SPEEDUP = 1.3  # a bf16 product this much faster than fp32 counts as fast (emulated bf16 is slower)
_OVERRIDE = "SHINE_CPU_BF16"


WORKLOADS = ("training", "inference")


def bf16_matmul_speedup(rows: int = 256, inner: int = 576, outer: int = 1536, repeats: int = 3) -> float:
    """fp32 time / bf16 time of one ``(rows, inner) @ (inner, outer)ᵀ`` product with the weight laid out as
    ``nn.Linear`` stores it (best of ``repeats`` each, after one warm-up): above 1 where bf16 is faster. Takes a few
    tens of milliseconds."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator)
    b = torch.randn(outer, inner, generator=generator).T

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        torch.mm(x, y)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(x, y)
            times.append(time.perf_counter() - started)
        return min(times)

    return best(a, b) / best(a.bfloat16(), b.bfloat16())


@functools.lru_cache(maxsize=len(WORKLOADS))
def cpu_has_fast_bf16(workload: str = "training") -> bool:
    """Whether a bf16 base LM runs faster than fp32 on this CPU for ``workload`` (`WORKLOADS`): a bf16 flag
    (`BF16_FLAGS`) and timed probes at least `MIN_PROBE_SPEEDUP` faster (`bf16_matmul_speedup`; for
    ``"inference"`` the one-row product too). ``SHINE_CPU_BF16=1``/``0`` decides instead."""
    if workload not in WORKLOADS:
        raise ConfigError(f"workload must be one of {WORKLOADS}, got {workload!r}.")
    override = os.environ.get(_OVERRIDE, "").strip()
    if override in ("0", "1"):
        return override == "1"
    if not bf16_flags() or bf16_matmul_speedup() < MIN_PROBE_SPEEDUP:
        return False
    return workload == "training" or bf16_matmul_speedup(rows=1) >= MIN_PROBE_SPEEDUP


def auto_dtype(device: str | torch.device = "cpu", workload: str = "inference") -> torch.dtype:
    """The dtype ``"auto"`` means for a frozen base LM on ``device``: bf16 on a CUDA device that supports it or on
    a CPU with fast bf16 matrix products for ``workload`` (`cpu_has_fast_bf16`), else fp32 (fp16 is never chosen
    silently)."""
    kind = torch.device(device).type if not isinstance(device, torch.device) else device.type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if kind == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16(workload) else torch.float32
    return torch.float32
