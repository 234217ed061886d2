"""The plot data `summary.json` carries for report.html, all bounded: latency histograms and the job's time series
(binned from every shard's sampled series)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from tide.jobs.report.series import ShardSeries

HISTOGRAM_BINS = 30
TIME_BINS = 120
MIN_BIN_S = 2.0  # shards sample about once a second: narrower bins would alternate between empty and full


def histogram(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> dict | None:
    """Counts over equal bins from 0 to the largest value (seconds)."""
    if not values.size:
        return None
    top = float(values.max()) or 1e-6
    counts, edges = np.histogram(values, bins=bins, range=(0.0, top))
    return {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()}


def job_series(series: list[ShardSeries], started: float, ended: float, max_bins: int = TIME_BINS) -> dict | None:
    """Throughput (sum over shards) and each worker's occupancy, KV use and preemptions on one time axis.

    `t` is seconds since the job started, one point per bin; token rates come from each shard's deltas placed in
    the bin where they were observed.
    """
    if not series or ended <= started:
        return None
    bins = min(max_bins, max(4, int((ended - started) / MIN_BIN_S)))
    width = (ended - started) / bins
    total, output = np.zeros(bins), np.zeros(bins)
    per_worker: dict[str, dict[str, list]] = defaultdict(lambda: {"occupancy": [[] for _ in range(bins)],
                                                                  "kv": [[] for _ in range(bins)],
                                                                  "preemptions": [None] * bins})
    for shard in series:
        worker = per_worker[shard.worker]
        for before, after in zip(shard.samples, shard.samples[1:]):
            i = min(max(int((after.t - started) / width), 0), bins - 1)
            output[i] += after.completion_tokens - before.completion_tokens
            total[i] += (after.completion_tokens - before.completion_tokens
                         + after.prompt_tokens - before.prompt_tokens)
            steps = (after.engine_steps or 0) - (before.engine_steps or 0)
            if steps > 0 and after.occupancy_sum is not None and before.occupancy_sum is not None:
                worker["occupancy"][i].append((after.occupancy_sum - before.occupancy_sum) / steps)
            if after.kv_cache_usage is not None:
                worker["kv"][i].append(after.kv_cache_usage)
            if after.preemptions is not None:
                worker["preemptions"][i] = max(worker["preemptions"][i] or 0, after.preemptions)
    return {
        "t": [round((i + 1) * width, 3) for i in range(bins)],
        "output_tokens_per_s": (output / width).round(3).tolist(),
        "total_tokens_per_s": (total / width).round(3).tolist(),
        "workers": {name: {"batch_occupancy": _means(w["occupancy"]), "kv_cache_usage": _means(w["kv"]),
                           "preemptions": _since_start(w["preemptions"])}
                    for name, w in sorted(per_worker.items())},
    }


def _means(cells: list[list[float]]) -> list[float | None]:
    return [round(float(np.mean(c)), 4) if c else None for c in cells]


def _since_start(totals: list[int | None]) -> list[int | None]:
    """The engine's running preemption count, shown from 0 at the first bin that saw one."""
    seen = [v for v in totals if v is not None]
    base = min(seen) if seen else 0
    return [None if v is None else v - base for v in totals]
