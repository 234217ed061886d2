"""`/v1/jobs`: native Tide jobs for what OpenAI's shape cannot say (Parquet, s3:// inputs and outputs, priority,
webhook), with progress, throughput and ETA, and their results streamed as JSONL while they run."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from tide.api.admission import admit_input, admit_model, admit_output, admit_webhook, scoped_idempotency_key
from tide.api.errors import APIError, not_found
from tide.api.files import owned_file
from tide.api.services import Services, owner, services
from tide.jobs.lifecycle import cancel_job, create_job, job_status, new_job_id
from tide.jobs.results import iter_job_rows
from tide.jobs.specs import JobSpec
from tide.jobs.state import Job
from tide.jobs.storage import resolve

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("")
def submit(body: Annotated[dict[str, Any], Body(description="a JobSpec; `input` is an s3:// URI or an uploaded "
                                                "file id, `output` defaults to the service's storage")],
           idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
           who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    spec = _spec(body, who, idempotency_key, svc)
    job_id = new_job_id()
    job = create_job(spec, svc.store, job_id, svc.storage_config, owner=who)
    if job.id == job_id:  # a new job, not the idempotency key's earlier one
        svc.catalog.own(who, "jobs", job.id, job.created_at)
        svc.dispatcher.send_plan(job.id, spec.model)
    return job_object(job, redact=svc.redact)


def _spec(body: dict[str, Any], who: str, idempotency_key: str | None, svc: Services) -> JobSpec:
    fields = dict(body)
    results = svc.storage.child("results").uri
    source = fields.get("input")
    if isinstance(source, str) and source.startswith("file-"):
        fields["input"] = owned_file(svc, who, source).uri
    elif isinstance(source, str) and source.startswith("s3://"):
        admit_input(svc, who, source)
    elif isinstance(source, str):
        raise APIError(400, "input must be an s3:// URI or an uploaded file id (file-...)", "input", "invalid_value")
    output = fields.setdefault("output", results)
    if isinstance(output, str) and output.startswith("s3://") and output != results:
        admit_output(svc, who, output)
    elif isinstance(output, str) and output != results:
        raise APIError(400, "output must be an s3:// prefix (or left out for the service's storage)", "output",
                       "invalid_value")
    if isinstance(fields.get("model", svc.settings.model), str):
        fields["model"] = admit_model(svc, fields.get("model", svc.settings.model), "model")
    fields.setdefault("shard_rows", svc.settings.shard_rows)
    fields["idempotency_key"] = scoped_idempotency_key(who, idempotency_key, fields.get("idempotency_key"))
    try:
        spec = JobSpec.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(map(str, first["loc"]))
        raise APIError(400, f"{param}: {first['msg']}", param or None, "invalid_value") from exc
    admit_webhook(svc, spec.webhook_url)
    return spec


@router.get("/{job_id}")
def retrieve(job_id: str, who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    return job_object(job_status(svc.store, _owned(svc, who, job_id)), redact=svc.redact)


@router.post("/{job_id}/cancel")
def cancel(job_id: str, who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    return job_object(cancel_job(svc.store, svc.dispatcher, _owned(svc, who, job_id), finalizer=svc.finalizer),
                      redact=svc.redact)


@router.get("/{job_id}/results")
def results(job_id: str, errors: bool = False, who: str = Depends(owner),
            svc: Services = Depends(services)) -> StreamingResponse:
    """Rows of the shards committed so far (all of them once the job has ended), as JSON lines."""
    job = svc.store.get_job(_owned(svc, who, job_id))
    prefix = resolve(job.output_prefix, svc.storage_config)
    rows = iter_job_rows(svc.store, job, prefix, errors)
    lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return StreamingResponse(lines, media_type="application/jsonl")


def _owned(svc: Services, who: str, job_id: str) -> str:
    """Jobs and batches share ids: either is reachable here by its owner."""
    if svc.catalog.owner_of(job_id) != who:
        raise not_found("Job", job_id)
    return job_id


def job_object(job: Job, now: float | None = None, redact: Callable[[str], str] = str) -> dict:
    """The job as stored (its caller's own idempotency key, messages through `redact`), plus progress, throughput
    and an ETA from the rate so far."""
    now = time.time() if now is None else now
    counts = job.request_counts
    done = counts.completed + counts.failed
    started = job.in_progress_at
    elapsed = max((job.finalizing_at or now) - started, 1e-9) if started else 0.0
    rate = done / elapsed if elapsed else 0.0
    remaining = max(counts.total - done, 0)
    view = json.loads(job.model_dump_json(exclude={"owner", "event_urls"}))
    if job.spec.idempotency_key:
        view["spec"]["idempotency_key"] = job.spec.idempotency_key.partition(":")[2]
    view["error"] = None if job.error is None else redact(job.error)
    for error in view["sample_errors"]:
        error["message"] = redact(error["message"])
    view.update(object="job", progress={"done": done, "total": counts.total,
                                        "fraction": done / counts.total if counts.total else 0.0},
                throughput={"rows_per_s": rate,
                            "output_tokens_per_s": job.usage.completion_tokens / elapsed if elapsed else 0.0},
                eta_s=None if job.status.terminal or not rate else remaining / rate)
    return view
