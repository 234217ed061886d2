"""The KV page warmer: which memory it maps, in what order, how far ahead of the steps, and that it stops."""
from __future__ import annotations

import ctypes
import errno
import sys
import time
import weakref

import pytest
import torch

from tide.engine import LLM, SamplingParams
from tide.engine.kv_pages import AHEAD_BYTES, PAGE, PageWarmer, anonymous_zeros, spans

LINUX = sys.platform.startswith("linux")


def resident_pages(tensor: torch.Tensor) -> tuple[int, int]:
    """(resident, total) pages of the memory under `tensor`, from mincore(2)."""
    start = tensor.data_ptr() - tensor.data_ptr() % PAGE
    length = tensor.data_ptr() + tensor.numel() * tensor.element_size() - start
    pages = -(-length // PAGE)
    vec = (ctypes.c_ubyte * pages)()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vec), pages


def block_bytes(cache: torch.Tensor) -> int:
    return cache[0, 0, 0].numel() * cache.element_size()


def span_ends(cache: torch.Tensor, got: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(plane, block after the last) of each span: spans end on block boundaries, only their starts are rounded."""
    size = block_bytes(cache)
    plane_bytes = cache.shape[2] * size
    ends = []
    for address, length in got:
        end = address + length - cache.data_ptr()
        plane = (end - 1) // plane_bytes
        assert (end - plane * plane_bytes) % size == 0
        ends.append((plane, (end - plane * plane_bytes) // size))
    return ends


def test_spans_cover_the_blocks_asked_for_in_every_plane_lower_blocks_first():
    cache = torch.empty(2, 2, 10, 16, 3, 8)  # 4 planes of 10 blocks of 1.5 KiB: blocks straddle pages
    size, plane_bytes = block_bytes(cache), 10 * block_bytes(cache)
    got = list(spans(cache, 3, 8, call_bytes=2 * size))
    assert span_ends(cache, got) == [(plane, end) for end in (5, 7, 8) for plane in range(4)]
    for (address, length), (plane, end) in zip(got, span_ends(cache, got)):
        start = cache.data_ptr() + plane * plane_bytes + (end - (1 if end == 8 else 2)) * size
        assert address % PAGE == 0 and start - PAGE < address <= start


def test_the_warmer_keeps_ahead_of_the_frontier_and_no_further():
    cache = torch.empty(1, 2, 64, 16, 1, 64)  # 4 KiB blocks
    calls: list[tuple[int, int]] = []
    warmer = PageWarmer.start(cache, ahead=8, populate=lambda address, length: calls.append((address, length)) or 0)
    try:
        assert warmer.wait_idle(10) and warmer.populated == 8
        warmer.reach(5)  # 14 wanted, at least a quarter of `ahead` past 8: the thread is woken
        assert warmer.wait_idle(10) and warmer.populated == 14
        warmer.reach(6)  # 15: not yet worth a wake-up
        assert warmer.wait_idle(10) and warmer.populated == 14
        assert max(end for _, end in span_ends(cache, calls)) == 14
        warmer.reach(63)
        assert warmer.wait_idle(10) and warmer.populated == 64
    finally:
        warmer.stop()
    assert sorted(set(span_ends(cache, calls))) == [(plane, end) for plane in (0, 1) for end in (8, 14, 64)]


def test_a_refused_call_ends_the_warmer_and_the_pages_fault_in_as_before():
    cache = torch.empty(1, 2, 64, 16, 1, 64)
    warmer = PageWarmer.start(cache, ahead=8, populate=lambda address, length: errno.EINVAL)
    assert not warmer.wait_idle(10)
    warmer.reach(40)
    warmer.stop()  # returns: the thread has ended
    assert warmer.populated == 0


@pytest.mark.skipif(not LINUX, reason="mincore is Linux's")
def test_a_cache_on_its_own_mapping_reads_zeros_and_takes_no_memory_until_touched():
    heap = torch.empty(64 << 20, dtype=torch.uint8).fill_(7)  # freed below: memory the C heap could hand out again
    del heap
    cache = anonymous_zeros((2, 2, 1024, 16, 3, 64), torch.bfloat16)
    assert resident_pages(cache)[0] <= 1
    assert not cache.any()


@pytest.mark.skipif(not LINUX, reason="MADV_POPULATE_WRITE and mincore are Linux's")
def test_the_warmer_maps_real_pages_that_still_read_as_zeros():
    cache = anonymous_zeros((2, 2, 1024, 16, 3, 64), torch.float32)  # 48 MiB
    before, pages = resident_pages(cache)
    assert before <= 1
    warmer = PageWarmer.start(cache, ahead=1024)
    try:
        assert warmer.wait_idle(60)
    finally:
        warmer.stop()
    assert resident_pages(cache)[0] >= pages - 2
    assert not cache.any()


@pytest.mark.skipif(not LINUX, reason="MADV_POPULATE_WRITE is Linux's")
def test_an_engine_with_a_large_cache_maps_the_blocks_after_those_it_writes(tiny_model_dir):
    llm = LLM(model=str(tiny_model_dir("llama")), kv_cache_bytes=96 << 20, block_size=16)
    runner = llm.engine.runner
    try:
        assert runner.page_warmer is not None
        llm.generate([[1, 2, 3] * 50] * 8, SamplingParams(max_tokens=4, ignore_eos=True))
        assert runner.page_warmer.wait_idle(60)
        ahead = AHEAD_BYTES // (runner.kv_cache[:, :, 0].numel() * runner.kv_cache.element_size())
        assert runner.page_warmer.populated >= min(ahead, runner.kv_cache.shape[2])
    finally:
        llm.engine.close()


def test_a_small_cache_has_no_warmer_and_reads_zeros(tiny_model_dir):
    llm = LLM(model=str(tiny_model_dir("llama")), kv_cache_bytes=1 << 20)
    try:
        assert llm.engine.runner.page_warmer is None
        assert not llm.engine.runner.kv_cache.any()
    finally:
        llm.engine.close()


def test_a_dropped_cache_is_freed_and_its_warmer_ends():
    cache = torch.empty(1, 2, 64, 16, 1, 64)
    warmer = PageWarmer.start(cache, ahead=8, populate=lambda address, length: 0)
    assert warmer.wait_idle(10)
    gone = weakref.ref(cache)
    del cache
    assert gone() is None  # the waiting thread does not keep the memory alive
    deadline = time.monotonic() + 5
    while not warmer.ended and time.monotonic() < deadline:
        time.sleep(0.05)
    assert warmer.ended
