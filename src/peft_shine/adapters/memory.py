"""An opt-in process setting that keeps the memory of long-document generation low: glibc's mmap threshold.

Chunked generation (`generate_adapter(..., chunking=...)`) holds at most one encoder pass of working tensors at a
time, whatever the document's length, besides the output adapter. With several chunks per pass what the operating
system sees is larger, because of how glibc's ``malloc`` serves blocks of a few MiB: it maps the first large block
of each size with ``mmap`` and returns it at ``free``, but after such a free it raises its threshold (up to 32 MiB),
so the next tensors of that size come from the heap, whose freed space stays in the process and is reused only where
it fits.

`return_large_allocations_to_os` pins the threshold: every block of at least ``threshold_mib`` is mapped on
allocation and unmapped when freed, so resident memory follows the live tensors more closely. The price is page
faults: fresh pages for every large tensor, so chunked generation on a CPU takes longer. It is the same as starting
Python with ``MALLOC_MMAP_THRESHOLD_=4194304`` in the environment, and like that it applies to the whole process and
for its whole life (glibc has no way back to the dynamic threshold), so it is never set for you. The README's
section on long documents has the measurements (``benchmarks/bench_long_context.py``).

Resident memory also grows, once, by the base's weights: transformers memory-maps them from their safetensors file,
so an embedding row becomes resident the first time its token is read (a long text meets more distinct tokens, up
to the whole table). That is the model's memory, file-backed and reclaimable, not the generation's.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from peft_shine.errors import ChunkingError


_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
_MAX_THRESHOLD_MIB = 32  # glibc's upper bound on 64-bit systems (HEAP_MAX_SIZE / 2)


def return_large_allocations_to_os(threshold_mib: float = 4) -> bool:
    """Serve every allocation of at least ``threshold_mib`` MiB with ``mmap`` and return it to the OS when freed.

    Process-wide and permanent (see the module docstring); call it once, before generating adapters from long
    documents, when peak memory matters more than time. Returns ``True`` when set, ``False`` where the C
    library is not glibc (macOS, musl, Windows): nothing is changed there.

    Raises:
        ChunkingError: (a ``ValueError``) a threshold outside ``(0, 32]`` MiB.
    """
    if not 0 < threshold_mib <= _MAX_THRESHOLD_MIB:
        raise ChunkingError(f"threshold_mib must be in (0, {_MAX_THRESHOLD_MIB}] MiB (glibc's limit), got "
                         f"{threshold_mib}.")
    library = ctypes.util.find_library("c")
    if library is None:
        return False
    libc = ctypes.CDLL(library)
    if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_mib * 2**20)))
