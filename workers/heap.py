"""The C heap set for a long-running engine process, so memory freed after a forward goes back to the OS.

glibc serves a block above its mmap threshold (128 KiB at start) with a fresh mapping, and raises the threshold to
the size of each such block freed, up to 32 MiB. An engine's activations are exactly that: tens of MiB, a different
shape every forward (the encoder packs texts by a token budget). After the first few forwards they all come from the
heap, where blocks of changing sizes leave holes that are never handed back: an embedding job's RSS grew from
1.1 GB to 2 GB over 26,000 texts with no Python object kept. What holds it flat, measured on embedding jobs:
- a fixed mmap threshold: large blocks are mapped and unmapped every time (their page faults are noise beside a
  forward), and the heap's free top beyond the trim threshold is returned at once;
- few arenas: each thread that allocates (Celery's, the engine loop, oneDNN's) otherwise gets an arena of its own
  (up to 8 per core), each fragmenting apart;
- Arrow's buffers (Parquet out) from the same glibc heap rather than Arrow's default mimalloc pool, which keeps what
  it has had;
- a periodic `malloc_trim(0)`, which hands back free pages inside the heap, not only at its top;
- a small oneDNN primitive cache: by default it keeps 1,024 compiled matmuls, one per shape met, and packed
  batches of short texts meet a new token count nearly every forward (about 130 MiB more at 20,000 texts);
  rebuilding a primitive on a miss is a fraction of a millisecond beside a forward.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from tide.jobs.periodic import Periodic

logger = logging.getLogger(__name__)

MMAP_THRESHOLD = 4 << 20  # blocks this size and larger are mapped, and unmapped when freed
TRIM_THRESHOLD = 16 << 20  # free memory at the heap's top beyond this goes back to the OS
MAX_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX)
ARENAS = 2
ONEDNN_PRIMITIVES = 64  # oneDNN reads ONEDNN_PRIMITIVE_CACHE_CAPACITY once, at its first primitive
TRIM_EVERY_S = 5.0  # malloc_trim walks the free lists: well under a millisecond per call here
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameter numbers, from malloc.h


def bound_native_heap(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD,
                      arenas: int = ARENAS) -> bool:
    """Fix glibc's mmap and trim thresholds (which also turns off the dynamic raise) and its arena count for this
    process, send Arrow's allocations to the same heap, and cap oneDNN's primitive cache (unless the environment
    already sets ONEDNN_PRIMITIVE_CACHE_CAPACITY). Call before the engine loads. Returns False, changing
    nothing, where the C library is not glibc (musl, macOS): their allocators differ."""
    if not 0 < mmap_threshold <= MAX_MMAP_THRESHOLD or trim_threshold <= 0 or arenas < 1:
        raise ValueError(f"mmap threshold {mmap_threshold} must be in (0, {MAX_MMAP_THRESHOLD}] (glibc's limit), "
                         f"trim threshold {trim_threshold} and arenas {arenas} above 0")
    libc = _glibc()
    if libc is None:
        return False
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVES))
    settings = ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_ARENA_MAX, arenas))
    refused = [value for param, value in settings if not libc.mallopt(param, value)]
    if refused:
        raise RuntimeError(f"glibc's mallopt refused {refused}")
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    return True


def start_heap_trimmer(interval_s: float = TRIM_EVERY_S) -> Periodic | None:
    """A thread handing the heap's free pages back every `interval_s` (stop it with `.stop()`); None without glibc."""
    libc = _glibc()
    if libc is None:
        return None
    return Periodic(lambda: libc.malloc_trim(0), interval_s, "tide-heap-trim", logger, "heap not trimmed").start()


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    try:
        libc.gnu_get_libc_version
    except AttributeError:
        return None
    return libc
