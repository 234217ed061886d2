"""The C heap set for a long-running engine process, so memory freed after a forward goes back to the OS.

glibc serves a block above its mmap threshold (128 KiB at start) with a fresh mapping, and raises the threshold to
the size of each such block freed, up to 32 MiB. An engine's activations are exactly that: tens of MiB, a different
shape every forward (the encoder packs texts by a token budget). After the first few forwards they all come from the
heap, where blocks of changing sizes leave holes that free() never hands back: an embedding worker's RSS climbed
from 1.23 GB to 1.62 GB over 100,000 short texts, with no Python object kept. What holds it, measured on embedding
jobs through a worker (docs/PERFORMANCE.md):
- `malloc_trim(0)` every second, which hands back free pages inside the heap, not only at its top;
- few arenas: each thread that allocates (Celery's, the engine loop, oneDNN's) otherwise gets an arena of its own
  (up to 8 per core), each holding its own free pages;
- Arrow's buffers (Parquet out) from the same glibc heap rather than Arrow's default mimalloc pool, which keeps what
  it has had;
- a small oneDNN primitive cache: by default it keeps 1,024 compiled matmuls, one per shape met, and packed batches
  of short texts meet a new token count nearly every forward; rebuilding one on a miss was not measurable.
Not kept: a fixed mmap threshold (every activation mapped and unmapped) held RSS as well but cost 23% of the
texts/s on short texts, in page faults.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from tide.jobs.periodic import Periodic

logger = logging.getLogger(__name__)

ARENAS = 2
ONEDNN_PRIMITIVES = 64  # oneDNN reads ONEDNN_PRIMITIVE_CACHE_CAPACITY once, at its first primitive
TRIM_EVERY_S = 1.0  # a trim costs about a millisecond here; a forward frees hundreds of MiB to hand back
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def bound_native_heap(arenas: int = ARENAS, trim_every_s: float = TRIM_EVERY_S) -> Periodic | None:
    """Cap glibc's arena count for this process, send Arrow's allocations to the same heap, cap oneDNN's primitive
    cache (unless the environment already sets ONEDNN_PRIMITIVE_CACHE_CAPACITY) and start a thread handing the
    heap's free pages back every `trim_every_s`. Call before the engine loads; returns that thread (`.stop()` it when
    the process is done), or None, changing nothing, where the C library is not glibc (musl, macOS): their
    allocators differ."""
    if arenas < 1:
        raise ValueError(f"arenas must be at least 1, got {arenas}")
    libc = _glibc()
    if libc is None:
        return None
    if not libc.mallopt(_M_ARENA_MAX, arenas):
        raise RuntimeError(f"glibc's mallopt refused {arenas} arenas")
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_PRIMITIVES))
    import pyarrow

    pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    return Periodic(lambda: libc.malloc_trim(0), trim_every_s, "tide-heap-trim", logger, "heap not trimmed").start()


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
