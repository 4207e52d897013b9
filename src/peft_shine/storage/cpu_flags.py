"""The CPU's feature flags, read from ``/proc/cpuinfo`` without importing torch (``shine env`` stays light), and
what the bf16-relevant ones mean for speed. `cpu_features` decides the dtype from them plus a timed probe."""

from __future__ import annotations

import functools
from pathlib import Path


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # matrix units / instructions that make bf16 matmuls fast
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_fp16")  # what `shine env` lists


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none, e.g. macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_flags() -> list[str]:
    """Which of `BF16_FLAGS` this CPU reports."""
    return [flag for flag in BF16_FLAGS if flag in cpu_flags()]


def bf16_speed_note(flags: list[str] | frozenset[str]) -> str:
    """What bf16 matmuls cost on a CPU with these flags, in words (the timed probe decides; this explains)."""
    if "amx_bf16" in flags:
        return "native (AMX bf16 tiles): bf16 matmuls several times faster than fp32, decoding included"
    if "avx512_bf16" in flags:
        return ("native (AVX512-BF16 dot products): batched bf16 matmuls about 2x fp32, one-row products "
                "(decoding) can be slower, so dtype auto decides per workload")
    return "slow: no native bf16 instructions, bf16 is emulated (fp32 is faster on this CPU)"
