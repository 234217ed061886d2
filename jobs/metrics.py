"""Service-wide counters that workers add to as shards finish, for the API's Prometheus /metrics.

Each finished shard adds its rows, tokens and latency histogram buckets once (with its final state, in the same
exactly-once step), so the totals are exact however often a shard is re-run. Fields are `model|name` in one hash.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from tide.jobs.state import ShardProgress

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
COUNTERS = ("rows_completed", "rows_failed", "prompt_tokens", "completion_tokens")


def shard_counters(model: str, progress: ShardProgress, ttfts: Iterable[float | None],
                   tpots: Iterable[float | None]) -> dict[str, float]:
    """What one finished shard adds to the service-wide counters."""
    fields = {f"{model}|rows_completed": progress.completed, f"{model}|rows_failed": progress.failed,
              f"{model}|prompt_tokens": progress.prompt_tokens,
              f"{model}|completion_tokens": progress.completion_tokens}
    fields.update(_histogram(f"{model}|ttft", ttfts, TTFT_BUCKETS))
    fields.update(_histogram(f"{model}|tpot", tpots, TPOT_BUCKETS))
    return {k: v for k, v in fields.items() if v}


def _histogram(name: str, values: Iterable[float | None], buckets: tuple[float, ...]) -> dict[str, float]:
    """Non-cumulative bucket counts (`name|le=B`, `+Inf` last), plus `name|sum` and `name|count`."""
    counts = [0] * (len(buckets) + 1)
    total, count = 0.0, 0
    for value in values:
        if value is not None:
            counts[bisect_left(buckets, value)] += 1  # the first bound >= value, as `le` means
            total += value
            count += 1
    if not count:
        return {}
    fields: dict[str, float] = {f"{name}|le={bound}": n for bound, n in zip((*buckets, "+Inf"), counts) if n}
    fields[f"{name}|sum"], fields[f"{name}|count"] = total, count
    return fields
