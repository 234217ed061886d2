"""The job's `summary.json`: counts, tokens, wall time, throughput, latency percentiles, per-worker figures, cost,
and the bounded plot data report.html is drawn from (latency histograms, time series)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq

from tide.jobs.report.cost import job_cost
from tide.jobs.report.figures import histogram, job_series
from tide.jobs.report.series import read_series
from tide.jobs.state import AdapterUsage, Job, ShardState
from tide.jobs.storage import Location

_TIMING_COLUMNS = ["ttft_s", "tpot_s", "latency_s"]


def build_summary(job: Job, shards: list[ShardState], prefix: Location, now: float,
                  price_per_worker_hour: float) -> dict:
    """Prices the job's worker-seconds at `price_per_worker_hour` (0: no price, worker-seconds only)."""
    started = job.in_progress_at or job.created_at
    wall = max(now - started, 1e-9)
    counts, usage = job.request_counts, job.usage
    timings = _read_timings(prefix)
    return {
        "job_id": job.id,
        "model": job.spec.model,
        "status": job.status.value,
        "request_counts": counts.model_dump(),
        "usage": {**usage.model_dump(), "total_tokens": usage.prompt_tokens + usage.completion_tokens},
        "wall_time_s": round(wall, 3),
        "requests_per_s": counts.completed / wall,
        "total_tokens_per_s": (usage.prompt_tokens + usage.completion_tokens) / wall,
        "output_tokens_per_s": usage.completion_tokens / wall,
        "latency_s": {name.removesuffix("_s"): _percentiles(values) for name, values in timings.items()},
        "preemptions": sum(_latest(owned).engine.preemptions for owned in _by_worker(shards).values()
                           if _latest(owned) is not None),
        "prefix_cache_hit_rate": _last_engine_figure(shards, "prefix_cache_hit_rate"),
        "workers": _per_worker(shards),
        "num_shards": len(shards),
        "job_prefix_cache_hit_rate": usage.cached_prompt_tokens / usage.prompt_tokens if usage.prompt_tokens else None,
        "speculative": _speculative(shards),
        "adapters": _adapters(shards),
        "cost": job_cost(shards, usage.completion_tokens, price_per_worker_hour),
        "histograms": {name.removesuffix("_s"): histogram(values) for name, values in timings.items()},
        "series": job_series(read_series(prefix), started, now),
    }


def _speculative(shards: list[ShardState]) -> dict | None:
    """Draft tokens the engines verified for this job's rows and the share accepted; None without speculation."""
    proposed = sum(s.progress.spec_proposed_tokens for s in shards)
    if not proposed:
        return None
    accepted = sum(s.progress.spec_accepted_tokens for s in shards)
    return {"proposed_tokens": proposed, "accepted_tokens": accepted, "acceptance_rate": accepted / proposed}


def _adapters(shards: list[ShardState]) -> dict[str, dict] | None:
    """Requests and tokens per LoRA adapter, summed over the shards; None when no row named an adapter."""
    totals: dict[str, AdapterUsage] = {}
    for shard in shards:
        for name, usage in shard.progress.adapters.items():
            total = totals.setdefault(name, AdapterUsage())
            for field in ("requests", "prompt_tokens", "completion_tokens"):
                setattr(total, field, getattr(total, field) + getattr(usage, field))
    return {name: usage.model_dump() for name, usage in sorted(totals.items())} or None


def _read_timings(prefix: Location) -> dict[str, np.ndarray]:
    """TTFT/TPOT/latency of every result row, read column-wise part by part (three floats per row)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in _TIMING_COLUMNS}
    for name in prefix.list_names():
        if not (name.startswith("part-") and name.endswith(".parquet")):
            continue
        with prefix.child(name).open_read() as f:
            parquet = pq.ParquetFile(f)
            present = [c for c in _TIMING_COLUMNS if c in parquet.schema_arrow.names]  # embeddings: latency only
            table = parquet.read(columns=present)
        for column in present:
            values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
            parts[column].append(values[~np.isnan(values)])
    return {name: np.concatenate(arrays) if arrays else np.empty(0) for name, arrays in parts.items()}


def _percentiles(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(np.mean(values))}


def _last_engine_figure(shards: list[ShardState], name: str) -> float | None:
    finished = [s for s in shards if s.engine is not None and s.finished_at is not None]
    if not finished:
        return None
    return getattr(max(finished, key=lambda s: s.finished_at).engine, name)


def _by_worker(shards: list[ShardState]) -> dict[str, list[ShardState]]:
    by_worker: dict[str, list[ShardState]] = defaultdict(list)
    for shard in shards:
        if shard.worker:
            by_worker[shard.worker].append(shard)
    return dict(sorted(by_worker.items()))


def _latest(owned: list[ShardState]) -> ShardState | None:
    """The worker's last finished shard: its engine figures are that engine's totals at the end of this job."""
    return max((s for s in owned if s.engine), key=lambda s: s.finished_at or 0, default=None)


def _per_worker(shards: list[ShardState]) -> dict[str, dict]:
    figures = {}
    for worker, owned in _by_worker(shards).items():
        busy = sum((s.finished_at or 0) - (s.started_at or 0) for s in owned if s.started_at)
        latest = _latest(owned)
        figures[worker] = {
            "shards": len(owned),
            "completed": sum(s.progress.completed for s in owned),
            "failed": sum(s.progress.failed for s in owned),
            "completion_tokens": sum(s.progress.completion_tokens for s in owned),
            "shard_seconds": round(busy, 3),
            "mean_batch_occupancy": latest.engine.mean_batch_occupancy if latest else None,
            "prefix_cache_hit_rate": latest.engine.prefix_cache_hit_rate if latest else None,
            "engine_busy_s": round(latest.engine.busy_time_s, 3) if latest else None,  # engine total since start
        }
    return figures


def format_report(summary: dict) -> str:
    """The throughput report printed when a job ends."""
    counts, usage, latency = summary["request_counts"], summary["usage"], summary["latency_s"]

    def ms(name: str, q: str) -> str:
        value = latency.get(name, {}).get(q)
        return "-" if value is None else f"{value * 1000:.0f} ms"

    lines = [
        f"job {summary['job_id']} {summary['status']} on {summary['model']}",
        f"  requests   {counts['completed']} completed, {counts['failed']} failed of {counts['total']}",
        f"  tokens     {usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion",
        f"  wall time  {summary['wall_time_s']:.1f} s",
        f"  throughput {summary['requests_per_s']:.2f} req/s, {summary['total_tokens_per_s']:.1f} total tok/s, "
        f"{summary['output_tokens_per_s']:.1f} output tok/s",
    ]
    for name in ("ttft", "tpot", "latency"):
        lines.append(f"  {name:<10} p50 {ms(name, 'p50')}, p90 {ms(name, 'p90')}, p99 {ms(name, 'p99')}")
    hit = summary.get("prefix_cache_hit_rate")
    lines.append(f"  engine     {summary['preemptions']} preemptions, prefix-cache hit rate "
                 f"{'-' if hit is None else f'{hit:.1%}'}")
    spec = summary.get("speculative")
    if spec:
        lines.append(f"  speculative decoding: {spec['acceptance_rate']:.1%} of {spec['proposed_tokens']} draft tokens "
                     "accepted")
    for name, usage in (summary.get("adapters") or {}).items():
        lines.append(f"  adapter {name}: {usage['requests']} requests, {usage['prompt_tokens']} prompt + "
                     f"{usage['completion_tokens']} completion tokens")
    cost = summary.get("cost")
    if cost:
        lines.append(_cost_line(cost))
    for worker, figures in summary["workers"].items():
        occupancy = figures["mean_batch_occupancy"]
        lines.append(f"  worker {worker}: {figures['shards']} shards, {figures['completed']} requests, "
                     f"batch occupancy {'-' if occupancy is None else f'{occupancy:.0%}'}")
    return "\n".join(lines)


def _cost_line(cost: dict) -> str:
    """A price of 0 means none was set: show the worker time and how to price it rather than a cost of 0."""
    if not cost["price_per_worker_hour"]:
        return (f"  cost       {cost['worker_seconds']:.1f} worker-s (set TIDE_PRICE_PER_WORKER_HOUR to see what "
                "they cost)")
    per_million = cost["cost_per_1m_output_tokens"]
    return (f"  cost       {cost['worker_seconds']:.1f} worker-s x {cost['price_per_worker_hour']:g}/h = "
            f"{cost['cost']:.4f} ({'-' if per_million is None else f'{per_million:.4f}'} per 1M output tokens)")
