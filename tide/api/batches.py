"""`/v1/batches`: an OpenAI batch is a Tide job (same id) over an uploaded file, seen in OpenAI's Batch shape."""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tide.api.admission import admit_batch_file, admit_model
from tide.api.errors import APIError, not_found
from tide.api.files import owned_file
from tide.api.pages import list_page
from tide.api.services import Services, owner, services
from tide.jobs.catalog.records import BatchRecord, FileRecord
from tide.jobs.endpoints import UnsupportedEndpoint, check_endpoint
from tide.jobs.lifecycle import cancel_job, create_job, job_status
from tide.jobs.openai_output import ERRORS_NAME, OUTPUT_NAME
from tide.jobs.specs import JobSpec
from tide.jobs.state import Job, JobStatus
from tide.jobs.storage import StorageError, resolve

router = APIRouter(prefix="/v1/batches", tags=["batches"])
FIRST_LINE_BYTES = 2**20  # read for the batch's model; a longer first line is that line's error at validation


class OutputExpiry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=30 * 86400)


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(min_length=1, max_length=128)
    endpoint: str = Field(max_length=64, description="/v1/chat/completions, /v1/completions, /v1/responses or "
                          "/v1/embeddings")
    completion_window: str = Field("24h", max_length=16, description="24h, or any duration such as 30m or 2d")
    metadata: dict[str, str] | None = None
    output_expires_after: OutputExpiry | None = None


@router.post("")
def create_batch(body: BatchCreate, who: str = Depends(owner),
                 svc: Services = Depends(services)) -> dict:
    try:
        check_endpoint(body.endpoint)
    except UnsupportedEndpoint as exc:
        raise APIError(400, str(exc), "endpoint", "unsupported_endpoint") from None
    source = owned_file(svc, who, body.input_file_id)
    if source.purpose != "batch":
        raise APIError(400, f"file {source.id} has purpose {source.purpose!r}, not 'batch'", "input_file_id",
                       "invalid_value")
    admit_batch_file(svc, source.bytes)
    requested = _first_model(source, svc) or svc.settings.model
    model = admit_model(svc, requested, "input_file_id")
    batch_id = f"batch_{uuid.uuid4().hex[:24]}"
    try:
        spec = JobSpec(input=source.uri, format="jsonl", model=model, endpoint=body.endpoint,
                       requested_model=requested if requested != model else None,
                       max_requests=svc.settings.batch_max_requests,
                       output=svc.storage.child("results").uri, completion_window=body.completion_window,
                       metadata=body.metadata or {}, shard_rows=svc.settings.shard_rows)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise APIError(400, f"{'.'.join(map(str, first['loc']))}: {first['msg']}",
                       ".".join(map(str, first["loc"])), "invalid_value") from exc
    job = create_job(spec, svc.store, batch_id, svc.storage_config, owner=who,
                     event_urls=svc.policy(who).webhooks)
    record = BatchRecord(id=batch_id, owner=who, endpoint=body.endpoint, input_file_id=source.id,
                         completion_window=body.completion_window, metadata=body.metadata,
                         output_expires_after_s=body.output_expires_after.seconds if body.output_expires_after
                         else None)
    svc.catalog.put_batch(record, job.created_at)
    svc.dispatcher.send_plan(job.id, spec.model)  # a worker validates the file after we answer
    return batch_object(svc, record, job)


def _first_model(source: FileRecord, svc: Services) -> str | None:
    """The `body.model` of the file's first line, if it names one (a bad line is found at validation)."""
    try:
        with resolve(source.uri, svc.storage_config).open_read() as f:
            line, read = b"", 0
            while not line.strip() and read < FIRST_LINE_BYTES:
                line = f.readline(FIRST_LINE_BYTES - read)
                if not line:
                    return None
                read += len(line)
        model = json.loads(line).get("body", {}).get("model")
    except (StorageError, ValueError, AttributeError, RecursionError):
        return None
    return model if isinstance(model, str) and model else None


@router.get("")
def list_batches(after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                 who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    ids = svc.catalog.page(who, "batches", after, limit + 1)
    return list_page(ids, limit, lambda i: _view(svc, i))


def _view(svc: Services, batch_id: str) -> dict | None:
    record = svc.catalog.get_batch(batch_id)
    return None if record is None else batch_object(svc, record, job_status(svc.store, batch_id))


@router.get("/{batch_id}")
def retrieve_batch(batch_id: str, who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    record = _owned(svc, who, batch_id)
    return batch_object(svc, record, job_status(svc.store, batch_id))


@router.post("/{batch_id}/cancel")
def cancel_batch(batch_id: str, who: str = Depends(owner), svc: Services = Depends(services)) -> dict:
    record = _owned(svc, who, batch_id)
    return batch_object(svc, record, cancel_job(svc.store, svc.dispatcher, batch_id, finalizer=svc.finalizer))


def _owned(svc: Services, who: str, batch_id: str) -> BatchRecord:
    record = svc.catalog.get_batch(batch_id)
    if record is None or record.owner != who:
        raise not_found("Batch", batch_id)
    return record


def batch_object(svc: Services, record: BatchRecord, job: Job) -> dict:
    """The OpenAI Batch object of a batch's record and its job (live counts)."""
    if job.status.terminal and job.summary_uri and not (record.output_file_id or record.error_file_id):
        record = _register_outputs(svc, record, job)
    usage = job.usage
    stamps = {f"{s}_at": _int(getattr(job, f"{s}_at")) for s in
              ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")}
    errors = _errors(svc, job)
    return {
        "id": record.id, "object": "batch", "endpoint": record.endpoint, "model": job.spec.model,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": record.input_file_id, "completion_window": record.completion_window,
        "status": job.status.value, "output_file_id": record.output_file_id, "error_file_id": record.error_file_id,
        "created_at": int(job.created_at), "expires_at": int(job.expires_at), **stamps,
        "request_counts": job.request_counts.model_dump(), "metadata": record.metadata,
        "usage": {"input_tokens": usage.prompt_tokens,
                  "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
                  "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": usage.prompt_tokens + usage.completion_tokens},
    }


def _errors(svc: Services, job: Job) -> list[dict]:
    """A failed batch's validation errors (OpenAI shows `errors` only on a batch that failed); the rest of its
    request failures are in the error file."""
    if job.status != JobStatus.FAILED:
        return []
    errors = [{"code": e.code, "line": e.line, "message": svc.redact(e.message), "param": e.param}
              for e in job.sample_errors]
    if job.error:
        errors.append({"code": "invalid_file", "line": None, "message": svc.redact(job.error),
                       "param": "input_file_id"})
    return errors


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def _register_outputs(svc: Services, record: BatchRecord, job: Job) -> BatchRecord:
    """File records for the output and error files the finalizer wrote (ids derived from the batch id)."""
    prefix = resolve(job.output_prefix, svc.storage_config)
    now = int(time.time())
    expires = None if record.output_expires_after_s is None else now + record.output_expires_after_s
    ids = {}
    for kind, name in (("output", OUTPUT_NAME), ("error", ERRORS_NAME)):
        location = prefix.child(name)
        size = location.size() if location.exists() else 0
        if not size:
            continue
        file_id = "file-" + hashlib.sha256(f"{record.id}/{kind}".encode()).hexdigest()[:24]
        svc.catalog.put_file(FileRecord(id=file_id, owner=record.owner, filename=f"{record.id}_{kind}.jsonl",
                                        purpose="batch_output", bytes=size, created_at=now, expires_at=expires,
                                        uri=location.uri))
        ids[f"{kind}_file_id"] = file_id
    if not ids:
        return record
    record = record.model_copy(update=ids)
    svc.catalog.update_batch(record)
    return record
