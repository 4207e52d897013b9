"""Timing helpers: warm-up, medians over repeats, and the machine facts recorded with every result."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median wall time of every function of ``fns``, timed in turns (one call of each per round, ``repeats``
    rounds after ``warmup`` untimed ones), so a load that comes and goes on a shared machine hits them alike and
    their ratios stay meaningful."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def machine_info() -> dict:
    """What the numbers depend on: threads, CPU count, versions."""
    import peft
    import transformers

    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "dtype": "float32",
    }


def read_every_weight(*models: torch.nn.Module) -> None:
    """Read every parameter and buffer of ``models`` once, so that their pages are resident before a memory
    measurement. Weights loaded from safetensors are memory-mapped from the file and become resident only when first
    read: an embedding row when its token first appears, so encoding a long text pages in more of the embedding
    table the more distinct tokens it meets (up to the whole table: 108 MiB for SmolLM2-135M). That is the model's
    memory (file-backed, reclaimable by the OS), not the measured operation's."""
    with torch.no_grad():
        for model in models:
            for tensor in (*model.parameters(), *model.buffers()):
                tensor.sum()


def current_rss_mib() -> float:
    """Resident memory of this process now, in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """Samples the resident memory every few milliseconds inside a ``with`` block; ``increase_mib`` is the peak
    over the block minus the memory just before it (``ru_maxrss`` cannot do this: model loading peaks higher)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s, self.peak_mib, self.before_mib = interval_s, 0.0, 0.0

    def __enter__(self) -> PeakMemory:
        import gc
        import threading

        gc.collect()
        self.before_mib = self.peak_mib = current_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, current_rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, current_rss_mib())

    @property
    def increase_mib(self) -> float:
        return self.peak_mib - self.before_mib
