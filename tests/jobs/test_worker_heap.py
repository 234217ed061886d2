import os
import subprocess
import sys

import pytest

from tide.workers.heap import bound_native_heap

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# Which pool Arrow allocates from and oneDNN's primitive cache size, with and without the bound.
BOUND_PROBE = """
import os, sys
import pyarrow
from tide.workers.heap import bound_native_heap
if sys.argv[1] == "bound":
    bound_native_heap().stop()
print(pyarrow.default_memory_pool().backend_name, os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"))
"""

# Fills 128 MiB of small heap blocks, frees all but the last (which pins the heap's top, so free() alone cannot
# shrink it), bounds the heap (which starts the trimmer) and prints the RSS the trimmer freed. pyarrow is imported
# first so that the bound's own import does not refill the freed pages.
TRIM_PROBE = """
import ctypes, time
from pathlib import Path
import pyarrow
from tide.workers.heap import bound_native_heap
def rss_mib():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
blocks = [libc.malloc(64 << 10) for _ in range(2048)]
for block in blocks:
    ctypes.memset(block, 1, 64 << 10)
for block in blocks[:-1]:
    libc.free(block)
held = rss_mib()
trimmer = bound_native_heap(trim_every_s=0.05)
time.sleep(0.5)
trimmer.stop()
print(held - rss_mib())
"""


def _probe(source: str, *args: str) -> list[str]:
    # A fresh interpreter: the settings are process-wide and must not leak into the test process (nor the cache
    # size an in-process `tide run` test left in this one's environment into the probe).
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    return subprocess.run([sys.executable, "-P", "-c", source, *args], capture_output=True, text=True,
                          check=True, env=env).stdout.split()


@glibc_only
def test_a_bounded_heap_sends_arrow_to_glibc_and_caps_onednns_primitive_cache():
    assert _probe(BOUND_PROBE, "default")[0] != "system"
    assert _probe(BOUND_PROBE, "bound") == ["system", "64"]


@glibc_only
def test_the_trimmer_hands_free_pages_inside_the_heap_back_to_the_os():
    assert float(_probe(TRIM_PROBE)[0]) > 100


def test_no_arenas_is_refused_before_reaching_malloc():
    with pytest.raises(ValueError, match="arenas must be at least 1, got 0"):
        bound_native_heap(arenas=0)
