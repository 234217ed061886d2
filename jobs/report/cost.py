"""What a job cost: the seconds each worker spent on it, times a price per worker-hour.

A worker's seconds on a job are the union of its shards' [started, finished] spans: shards it ran side by side
(several per worker share one engine) are counted once, and the time it served other jobs is not counted at all.
"""
from __future__ import annotations

from collections import defaultdict

from tide.jobs.state import ShardState


def worker_seconds(shards: list[ShardState]) -> dict[str, float]:
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for shard in shards:
        if shard.worker and shard.started_at is not None and shard.finished_at is not None:
            spans[shard.worker].append((shard.started_at, max(shard.finished_at, shard.started_at)))
    return {worker: _union_length(owned) for worker, owned in sorted(spans.items())}


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def job_cost(shards: list[ShardState], completion_tokens: int, price_per_worker_hour: float) -> dict:
    seconds = worker_seconds(shards)
    total_s = sum(seconds.values())
    cost = total_s / 3600 * price_per_worker_hour
    return {
        "price_per_worker_hour": price_per_worker_hour,
        "worker_seconds": round(total_s, 3),
        "per_worker_seconds": {worker: round(s, 3) for worker, s in seconds.items()},
        "cost": round(cost, 6),
        "cost_per_1m_output_tokens": round(cost / completion_tokens * 1e6, 6) if completion_tokens else None,
    }
