"""The dashboard: `GET /` serves the page (no data in it), `GET /v1/dashboard` what it shows, behind the same keys.

The page polls `/v1/dashboard` every two seconds with the caller's key: the caller's jobs and batches (status,
progress, tokens/s, ETA), the depth of the queues of the models they use, live workers from their heartbeats, and
the last scores of the eval suites the key's policy lets it see. Nothing of another key's shows.
A finished job's report.html comes from `GET /v1/jobs/{id}/report` (the page fetches it with the key).
"""
from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from tide.api.dashboard_page import PAGE
from tide.api.errors import not_found
from tide.api.jobs_routes import job_object
from tide.api.ops import _queue_depths
from tide.api.services import Services, owner, services
from tide.jobs.evals.history import History
from tide.jobs.evals.suites import load_suites
from tide.jobs.report.html import render_report
from tide.jobs.specs import queue_for
from tide.jobs.storage import resolve
from tide.jobs.store import JobNotFound
from tide.workers.registry import WorkerInfo, live_workers

router = APIRouter(tags=["dashboard"])
RECENT = 30  # jobs and batches listed
TREND = 10  # eval scores kept per suite


@router.get("/", include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})


@router.get("/v1/dashboard")
def dashboard(request: Request, who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    now = time.time()
    jobs = _jobs(svc, who, now)
    models = {queue_for(j["model"]) for j in jobs}
    queues = {name: depth for name, depth in _queue_depths(svc.store.redis).items() if name in models}
    return {"now": now, "jobs": jobs, "queues": queues,
            "workers": _workers(request, live_workers(svc.store.redis), now), "evals": _evals(svc, who)}


@router.get("/v1/jobs/{job_id}/report", response_class=HTMLResponse)
def report(job_id: str, who: str = Depends(owner), svc: Services = Depends(services)) -> HTMLResponse:
    """The job's report.html, drawn from its summary.json (404 until the job has one)."""
    if svc.catalog.owner_of(job_id) != who:
        raise not_found("Job", job_id)
    job = svc.store.get_job(job_id)
    if job.summary_uri is None:
        raise not_found("report", job_id)
    return HTMLResponse(render_report(json.loads(resolve(job.summary_uri, svc.storage_config).read_bytes())))


def _jobs(svc: Services, who: str, now: float) -> list[dict]:
    ids = {job_id: kind for kind in ("batches", "jobs") for job_id in svc.catalog.page(who, kind, None, RECENT)}
    rows = []
    for job_id, kind in ids.items():
        try:
            job = svc.store.get_job(job_id)
        except JobNotFound:
            continue
        view = job_object(job, now, redact=svc.redact)
        rows.append({"id": job.id, "kind": "batch" if kind == "batches" else "job", "status": job.status.value,
                     "model": job.spec.model, "created_at": job.created_at, "progress": view["progress"],
                     "output_tokens_per_s": view["throughput"]["output_tokens_per_s"], "eta_s": view["eta_s"],
                     "failed": job.request_counts.failed, "report": job.summary_uri is not None})
    return sorted(rows, key=lambda r: r["created_at"], reverse=True)[:RECENT]


def _workers(request: Request, workers: list[WorkerInfo], now: float) -> list[dict]:
    """Tokens/s between the last two heartbeats this API process saw of each worker (its mean busy rate at first)."""
    seen: dict[str, tuple[float, int]] = request.app.state.__dict__.setdefault("dashboard_heartbeats", {})
    rows = []
    for w in workers:
        tokens, previous = w.engine.generation_tokens, seen.get(w.name)
        if previous and w.last_heartbeat > previous[0]:
            rate = (tokens - previous[1]) / (w.last_heartbeat - previous[0])
        else:
            rate = tokens / w.engine.busy_time_s if w.engine.busy_time_s else 0.0
        if not previous or w.last_heartbeat > previous[0]:
            seen[w.name] = (w.last_heartbeat, tokens)
        rows.append({"name": w.name, "model": w.model, "host": w.host, "concurrency": w.concurrency,
                     "batch_occupancy": w.engine.mean_batch_occupancy, "tokens_per_s": max(rate, 0.0),
                     "generation_tokens": tokens, "last_heartbeat": w.last_heartbeat,
                     "heartbeat_age_s": max(now - w.last_heartbeat, 0.0)})
    return rows


def _evals(svc: Services, who: str) -> list[dict]:
    policy = svc.policy(who)
    if not svc.settings.evals_config or not policy.evals:
        return []
    try:
        suites = load_suites(svc.settings.evals_config)
    except Exception as exc:  # a broken suites file shows on the page instead of breaking it
        return [{"suite": "(suites file)", "error": svc.redact(str(exc))}]
    rows = []
    for name, suite in sorted(suites.items()):
        if not policy.sees_suite(name):
            continue
        try:
            runs = History(suite.history, name, svc.storage_config).index()
        except Exception as exc:
            rows.append({"suite": name, "model": suite.model, "error": svc.redact(str(exc))})
            continue
        last = runs[-1] if runs else None
        rows.append({"suite": name, "model": suite.model, "runs": len(runs),
                     "last_score": last["score"] if last else None, "last_status": last["status"] if last else None,
                     "last_finished_at": last["finished_at"] if last else None,
                     "trend": [r["score"] for r in runs[-TREND:]]})
    return rows
