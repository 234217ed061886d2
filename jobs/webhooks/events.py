"""What a webhook says, and the record of one delivery. Two shapes: Tide's thin events `{type, timestamp, data: {id,
...counts}}` (a job's `webhook_url`, evals), and OpenAI's `{id, object: "event", created_at, type, data: {id}}` (the
batch events sent to the endpoints configured for an API key).

The body is serialized once, when the event is queued, so every retry sends (and signs) the same bytes under the
same `webhook-id`.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

JOB_EVENTS = {"completed": "batch.completed", "failed": "batch.failed", "cancelled": "batch.cancelled",
              "expired": "batch.expired"}
EVAL_COMPLETED = "eval.completed"
EVAL_REGRESSED = "eval.regressed"


class DeliveryState(str, Enum):
    PENDING = "pending"  # waiting for its next attempt
    DELIVERED = "delivered"  # a 2xx answer
    DISABLED = "disabled"  # the endpoint answered 410: nothing more goes there for this owner
    FAILED = "failed"  # refused (SSRF guard, a 4xx) or out of retries


class Delivery(BaseModel):
    """One event on its way to one URL; `id` is its `webhook-id`, the same across retries."""

    id: str
    owner: str = Field(description="the job or eval run the event is about")
    url: str
    type: str
    body: str = Field(description="the JSON payload exactly as signed")
    created_at: float
    next_at: float
    attempts: int = 0
    state: DeliveryState = DeliveryState.PENDING
    last_error: str | None = None
    signer: str | None = Field(None, description="the API key (owner name) whose own secret signs it, if it has one")


class LogEntry(BaseModel):
    """One attempt in an owner's delivery log (never a secret: the URL's host and path, the answer)."""

    webhook_id: str
    type: str
    attempt: int
    at: float
    status_code: int | None = None
    error: str | None = None
    outcome: str


def new_delivery(owner: str, url: str, type: str, data: dict[str, Any], now: float,
                 signer: str | None = None) -> Delivery:
    """A Tide event: `{type, timestamp, data}`."""
    payload = {"type": type, "timestamp": datetime.fromtimestamp(now, timezone.utc).isoformat(), "data": data}
    return Delivery(id=f"msg_{uuid.uuid4().hex}", owner=owner, url=url, type=type, created_at=now, next_at=now,
                    body=json.dumps(payload, separators=(",", ":")), signer=signer)


def openai_delivery(owner: str, url: str, type: str, object_id: str, now: float,
                    signer: str | None = None) -> Delivery:
    """An event in OpenAI's shape, `{id: evt_..., object: "event", created_at, type, data: {id}}`; the webhook-id
    header is the delivery's own id, as OpenAI's differs from the event's."""
    payload = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "created_at": int(now), "type": type,
               "data": {"id": object_id}}
    return Delivery(id=f"wh_{uuid.uuid4().hex}", owner=owner, url=url, type=type, created_at=now, next_at=now,
                    body=json.dumps(payload, separators=(",", ":")), signer=signer)


def job_event(job) -> tuple[str, dict[str, Any]]:
    """(type, data) of a job that reached a terminal status: its id, status and request counts."""
    counts = job.request_counts
    return JOB_EVENTS[job.status.value], {"id": job.id, "status": job.status.value, "total": counts.total,
                                          "completed": counts.completed, "failed": counts.failed}
