"""The cyclic garbage collector set for a long-running worker.

A worker keeps every row, request and result of the shards it holds alive until the shard commits: hundreds of
thousands of objects, none of them garbage, that the default thresholds (a young collection every 700 allocations,
a full one every 100 of those) scan again and again. With null engines that scanning was about a third of a
worker's CPU per row. Cycles are still collected, only less often; what startup built (modules, the engine, Celery)
is left out of every later scan.
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # allocations between young collections (default 700)


def settle_after_startup() -> None:
    """Call once the long-lived startup objects exist and before serving work."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
