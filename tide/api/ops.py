"""Operations: liveness, readiness, and Prometheus metrics read from Redis on each scrape."""
from __future__ import annotations

from collections import Counter

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from tide.api.services import Services, services
from tide.jobs import keys
from tide.jobs.metrics import COUNTERS, TPOT_BUCKETS, TTFT_BUCKETS
from tide.jobs.state import JobStatus
from tide.workers.registry import live_workers

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(svc: Services = Depends(services)) -> JSONResponse:
    checks = {}
    try:
        checks["redis"] = bool(svc.store.redis.ping())
    except Exception:
        checks["redis"] = False
    try:
        svc.storage.child("files").list_names()
        checks["storage"] = True
    except Exception:
        checks["storage"] = False
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "unavailable", "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics")
def metrics(svc: Services = Depends(services)) -> Response:
    registry = CollectorRegistry()
    registry.register(_Collector(svc))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class _Collector:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self):
        redis = self.svc.store.redis
        jobs = GaugeMetricFamily("tide_jobs", "Jobs by status (the newest 10000)", labels=["status"])
        by_status = Counter(job.status.value for job in self.svc.store.recent_jobs())
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        yield jobs
        depth = GaugeMetricFamily("tide_queue_depth", "Tasks waiting in a model's queue", labels=["queue"])
        for queue, length in sorted(_queue_depths(redis).items()):
            depth.add_metric([queue], length)
        yield depth
        yield from _counter_families(self.svc.store.counters())
        workers = live_workers(redis)
        occupancy = GaugeMetricFamily("tide_worker_batch_occupancy", "Mean batch occupancy of a worker's engine",
                                      labels=["worker", "model"])
        count = GaugeMetricFamily("tide_workers", "Live workers per served model", labels=["model"])
        for worker in workers:
            occupancy.add_metric([worker.name, worker.model], worker.engine.mean_batch_occupancy)
        for model, n in sorted(Counter(w.model for w in workers).items()):
            count.add_metric([model], n)
        yield occupancy
        yield count


def _queue_depths(redis) -> dict[str, int]:
    depths: Counter = Counter()
    for key in redis.scan_iter(match=keys.QUEUE_LISTS_PATTERN, count=500):
        if redis.type(key) == b"list":
            depths[keys.queue_of_list(key)] += redis.llen(key)
    return dict(depths)


def _counter_families(counters: dict[str, float]):
    """Rows, tokens and latency histograms per model, from the `model|name` fields workers add to."""
    models = sorted({name.split("|", 1)[0] for name in counters})
    families = {name: CounterMetricFamily(f"tide_{name}", f"{name.replace('_', ' ').capitalize()} processed",
                                          labels=["model"]) for name in COUNTERS}
    for model in models:
        for name, family in families.items():
            family.add_metric([model], counters.get(f"{model}|{name}", 0))
    yield from families.values()
    for name, buckets, text in (("ttft", TTFT_BUCKETS, "Time to first token"),
                                ("tpot", TPOT_BUCKETS, "Time per output token")):
        family = HistogramMetricFamily(f"tide_{name}_seconds", text, labels=["model"])
        for model in models:
            cumulative, points = 0.0, []
            for bound in [*buckets, "+Inf"]:
                cumulative += counters.get(f"{model}|{name}|le={bound}", 0)
                points.append((str(bound), cumulative))
            family.add_metric([model], points, sum_value=counters.get(f"{model}|{name}|sum", 0.0))
        yield family
