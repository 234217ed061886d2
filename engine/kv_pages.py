"""A CPU KV cache's memory: a mapping of its own, whose pages a background thread maps just ahead of the steps.

A CPU cache lives on a private anonymous mapping (`anonymous_zeros`) whose pages the OS zero-fills on first touch:
start-up costs nothing, a cache the work never fills never becomes resident, and unlike a block from the C heap
(which hands a large request memory an earlier engine freed) it is certain to read as zeros. Left alone, those first
touches land inside the steps' KV writes, a few microseconds each in a VM: about 5% of a fresh engine's pass over a
chat workload in fp32 (docs/PERFORMANCE.md). A fresh engine hands blocks out in increasing id order (the block
manager's free queue starts in id order and puts freed blocks at its end), so the highest block a step writes is the
frontier of what has been touched. The warmer keeps the next AHEAD_BYTES of blocks (all layers together) populated
(`madvise(MADV_POPULATE_WRITE)`, Linux 5.14+), 256 KiB a call, at nice 19: it runs on a core the engine leaves
idle (host work between steps, a worker waiting for work) and yields it as soon as the steps want it. Where the
kernel refuses the call, it stops and the pages fault in lazily as before.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import math
import mmap
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator

import torch

logger = logging.getLogger("tide.kv_pages")

MADV_POPULATE_WRITE = 23
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
CALL_BYTES = 256 << 10  # per call: short, so that stop() and the process's mmap lock are never held up for long
# Populated past the frontier, all layers together: SmolLM2-135M's next 364 blocks in fp32 (5.8k tokens, ~6 steps of
# a full prefill), a 7B model's next 64 blocks.
AHEAD_BYTES = 512 << 20

Populate = Callable[[int, int], int]  # (address, length) -> 0, or an errno


def anonymous_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A CPU tensor of zeros on a private anonymous mapping of its own, unmapped when the tensor is freed."""
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):
        return torch.zeros(shape, dtype=dtype)
    mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(mapping, dtype=dtype).view(shape)  # the tensor holds the mapping


def spans(cache: torch.Tensor, first: int, last: int, call_bytes: int = CALL_BYTES) -> Iterator[tuple[int, int]]:
    """(address, length) ranges covering blocks [first, last) of the contiguous `cache` [layers, 2, blocks, ...] in
    every layer's K and V, each starting on a page boundary, lower blocks first."""
    planes, blocks = cache.shape[0] * cache.shape[1], cache.shape[2]
    block_bytes = math.prod(cache.shape[3:]) * cache.element_size()
    step = max(1, call_bytes // block_bytes)
    base = cache.data_ptr()
    for block in range(first, last, step):
        length = min(step, last - block) * block_bytes
        for plane in range(planes):
            start = base + (plane * blocks + block) * block_bytes
            yield start - start % PAGE, length + start % PAGE


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def madvise_populate(address: int, length: int) -> int:
    libc = _libc()  # ctypes releases the GIL for the call
    if libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), ctypes.c_int(MADV_POPULATE_WRITE)) == 0:
        return 0
    return ctypes.get_errno()


class PageWarmer:
    """The background thread that keeps one cache's next blocks populated; `reach` moves the frontier."""

    def __init__(self, cache: torch.Tensor, ahead: int | None = None, populate: Populate = madvise_populate) -> None:
        # Weakly held: an engine dropped without close() frees its cache, and the thread then ends by itself.
        self._cache = weakref.ref(cache)
        self._ahead = ahead or max(1, AHEAD_BYTES // (cache[:, :, 0].numel() * cache.element_size()))
        self._populate = populate
        self._num_blocks = cache.shape[2]
        self._target = min(self._ahead, self._num_blocks)  # populate blocks below this
        self.populated = 0  # blocks below this are populated
        self._wake = threading.Condition()
        self._stopped = False
        self._ended = False
        self._thread = threading.Thread(target=self._run, name="tide-kv-pages", daemon=True)

    @classmethod
    def start(cls, cache: torch.Tensor, ahead: int | None = None,
              populate: Populate = madvise_populate) -> PageWarmer:
        warmer = cls(cache, ahead, populate)
        warmer._thread.start()
        return warmer

    def reach(self, block: int) -> None:
        """A step writes block `block`: keep the `ahead` blocks after it populated."""
        target = min(block + 1 + self._ahead, self._num_blocks)
        if target >= self._target + self._ahead // 4:  # wake the thread a batch at a time, not every step
            with self._wake:
                self._target = target
                self._wake.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until the blocks asked for so far are populated (or the thread ended, or `timeout`); for tests and
        benchmarks. Returns whether they are."""
        with self._wake:
            self._wake.wait_for(lambda: self.populated >= self._target or self._ended, timeout)
            return self.populated >= self._target

    @property
    def ended(self) -> bool:
        """The thread is gone: every block populated, stopped, refused by the kernel, or its cache freed."""
        return self._ended

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        self._thread.join()

    def _run(self) -> None:
        if sys.platform.startswith("linux"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            while True:
                with self._wake:
                    if not self._wake.wait_for(lambda: self._stopped or self._target > self.populated, timeout=1.0):
                        if self._cache() is None:
                            return
                        continue
                    if self._stopped:
                        return
                    first, last = self.populated, self._target
                if not self._populate_blocks(first, last):
                    return
                with self._wake:
                    self.populated = last
                    self._wake.notify_all()
                if last == self._num_blocks:
                    return
        finally:
            with self._wake:
                self._ended = True
                self._wake.notify_all()

    def _populate_blocks(self, first: int, last: int) -> bool:
        cache = self._cache()  # held while its pages are worked on, so they stay mapped
        if cache is None:
            return False
        for address, length in spans(cache, first, last):
            if self._stopped:
                return False
            error = self._populate(address, length)
            if error:
                logger.info("KV cache pages fault in as steps reach them (madvise: %s)", os.strerror(error))
                return False
        return True
