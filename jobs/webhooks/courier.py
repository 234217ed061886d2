"""The courier: claims due deliveries from an outbox, attempts each once, and schedules its retry.

A long-lived process (`tide beat`) runs `Courier.run` over the Redis outbox; `tide run` and `tide eval run` without
Redis call `Courier.drain`, which keeps going (with the same schedule) until nothing is pending, before they exit.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from tide.jobs.webhooks.delivery import AttemptResult, Outcome, WebhookRefused, check_url, post
from tide.jobs.webhooks.events import Delivery, DeliveryState, LogEntry, new_delivery
from tide.jobs.webhooks.outbox import Outbox
from tide.jobs.webhooks.signing import sign_headers

logger = logging.getLogger("tide.webhooks")

# Standard Webhooks' schedule: the delay before each attempt (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h).
DEFAULT_SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
MAX_RETRY_AFTER_S = 86400.0


def parse_schedule(value: str | list | tuple) -> tuple[float, ...]:
    """'0,5,300' -> (0.0, 5.0, 300.0): the delay before each attempt, first one included."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        delays = tuple(float(str(item).strip()) for item in items if str(item).strip())
    except ValueError:
        raise ValueError(f"webhook retry schedule {value!r} must be comma-separated seconds, e.g. 0,5,300") \
            from None
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"webhook retry schedule {value!r} needs at least one delay, none negative")
    return delays


class WebhookConfig(BaseModel):
    """How deliveries are signed and retried (built from Settings by the entry points)."""

    secrets: list[str] = Field(default_factory=list, repr=False)
    # An API key's own signing secrets, by the owner name of the key (events of its batches and jobs are signed with
    # them instead of `secrets`, so no tenant can sign as another).
    key_secrets: dict[str, list[str]] = Field(default_factory=dict, repr=False)
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    allow_private: bool = False
    timeout_s: float = 15.0

    @field_validator("schedule", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> tuple[float, ...]:
        return parse_schedule(value)

    def secrets_for(self, signer: str | None) -> list[str]:
        return self.key_secrets.get(signer, self.secrets) if signer else self.secrets


def enqueue(outbox: Outbox, owner: str, url: str, type: str, data: dict[str, Any], now: float) -> Delivery:
    """Queue one thin event for `url`; its first attempt is due at once."""
    return queue_delivery(outbox, new_delivery(owner, url, type, data, now))


def queue_delivery(outbox: Outbox, delivery: Delivery) -> Delivery:
    """Queue a delivery made by one of `events.py`'s makers; its first attempt is due at `next_at`."""
    outbox.add(delivery)
    logger.info("webhook %s (%s) for %s queued", delivery.id, delivery.type, delivery.owner)
    return delivery


def replay(outbox: Outbox, owner: str, now: float) -> list[Delivery]:
    """Send an owner's events again (same webhook-id, so receivers can tell), from the schedule's first attempt."""
    again = []
    for delivery in outbox.deliveries(owner):
        fresh = delivery.model_copy(update={"state": DeliveryState.PENDING, "attempts": 0, "next_at": now,
                                            "last_error": None})
        outbox.save(fresh)
        again.append(fresh)
    return again


class Courier:
    def __init__(self, outbox: Outbox, config: WebhookConfig, clock: Callable[[], float] = time.time,
                 poster: Callable[..., AttemptResult] = post) -> None:
        self.outbox, self.config, self.clock, self.poster = outbox, config, clock, poster
        self.lease_s = config.timeout_s + 30

    def pump(self, pool: ThreadPoolExecutor | None = None) -> int:
        """Attempt every delivery due now (on `pool` when given); returns how many were claimed."""
        due = self.outbox.claim_due(self.clock(), self.lease_s)
        for delivery in due:
            if pool is None:
                self.attempt(delivery)
            else:
                pool.submit(self._guarded, delivery)
        return len(due)

    def run(self, stop: threading.Event, poll_s: float = 0.5, threads: int = 8) -> None:
        """Deliver until `stop` is set: the loop of a long-lived process."""
        with ThreadPoolExecutor(threads, thread_name_prefix="tide-webhook") as pool:
            while not stop.is_set():
                try:
                    self.pump(pool)
                except Exception:  # Redis away for a moment: keep the loop alive, the outbox keeps the work
                    logger.exception("webhook courier round failed")
                stop.wait(poll_s)

    def drain(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Attempt until nothing is pending, sleeping until each next retry (the in-process path)."""
        while (due_at := self.outbox.next_due()) is not None:
            wait = due_at - self.clock()
            if wait > 0:
                logger.warning("webhook: next attempt in %.0f s", wait)
                sleep(wait)
            self.pump()

    def _guarded(self, delivery: Delivery) -> None:
        try:
            self.attempt(delivery)
        except Exception:
            logger.exception("webhook %s: attempt crashed; retried after its lease", delivery.id)

    def attempt(self, delivery: Delivery) -> Delivery:
        """One attempt: sign, POST, record it in the owner's log, and save the delivery's next state."""
        now = self.clock()
        number = delivery.attempts + 1
        if self.outbox.is_disabled(delivery.owner, delivery.url):
            result = AttemptResult(Outcome.GONE, error="endpoint disabled by an earlier 410")
        else:
            try:
                address = check_url(delivery.url, self.config.allow_private)
                headers = sign_headers(self.config.secrets_for(delivery.signer), delivery.id, now, delivery.body)
                result = self.poster(delivery.url, delivery.body, headers, self.config.timeout_s, address)
            except (WebhookRefused, ValueError) as exc:
                result = AttemptResult(Outcome.FAILED, error=str(exc))
        state, next_at = self._next(result, number, now)
        if result.outcome == Outcome.GONE:
            self.outbox.disable(delivery.owner, delivery.url)
        self.outbox.append_log(delivery.owner, LogEntry(
            webhook_id=delivery.id, type=delivery.type, attempt=number, at=now, status_code=result.status_code,
            error=result.error, outcome=result.outcome.value if state != DeliveryState.FAILED else "failed"))
        updated = delivery.model_copy(update={"attempts": number, "state": state, "next_at": next_at,
                                              "last_error": result.error})
        self.outbox.save(updated)
        self._report(updated, result, now)
        return updated

    def _next(self, result: AttemptResult, number: int, now: float) -> tuple[DeliveryState, float]:
        if result.outcome == Outcome.DELIVERED:
            return DeliveryState.DELIVERED, now
        if result.outcome == Outcome.GONE:
            return DeliveryState.DISABLED, now
        schedule = self.config.schedule
        if result.outcome == Outcome.FAILED or number >= len(schedule):
            return DeliveryState.FAILED, now
        delay = max(schedule[number], min(result.retry_after_s or 0.0, MAX_RETRY_AFTER_S))
        return DeliveryState.PENDING, now + delay

    @staticmethod
    def _report(delivery: Delivery, result: AttemptResult, now: float) -> None:
        where = _safe_url(delivery.url)
        if delivery.state == DeliveryState.DELIVERED:
            logger.info("webhook %s (%s) delivered to %s", delivery.id, delivery.type, where)
        elif delivery.state == DeliveryState.PENDING:
            logger.warning("webhook %s to %s attempt %d failed (%s); retry in %.0f s", delivery.id, where,
                           delivery.attempts, result.error, delivery.next_at - now)
        else:
            logger.error("webhook %s to %s %s after %d attempts: %s", delivery.id, where, delivery.state.value,
                         delivery.attempts, result.error)


def _safe_url(url: str) -> str:
    """The URL without its query or credentials (either may carry a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
