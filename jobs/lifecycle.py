"""A job's life: submit (validate, plan, fan out), status, cancel, and finalize (summary, status, webhook).

Everything here talks to a `JobStore` and a `Dispatcher`, so the same code drives Redis/Celery jobs and `tide run`.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tide.jobs.dispatch import Dispatcher, shard_task_id
from tide.jobs.leases.book import leases_for
from tide.jobs.openai_output import write_openai_files
from tide.jobs.planner import Plan, plan_job
from tide.jobs.report.html import write_report
from tide.jobs.specs import JobSpec, ShardTask, window_seconds
from tide.jobs.state import Job, JobStatus, RequestCounts, SampleError, ShardState, ShardStatus, with_counts
from tide.jobs.storage import StorageConfig, StorageError, resolve
from tide.jobs.store import JobNotFound, JobStore
from tide.jobs.summary import build_summary
from tide.jobs.webhooks.courier import queue_delivery
from tide.jobs.webhooks.events import JOB_EVENTS, job_event, new_delivery, openai_delivery
from tide.jobs.webhooks.outbox import Outbox, outbox_for

logger = logging.getLogger("tide.jobs")

SUMMARY_NAME = "summary.json"


@dataclass
class Finalizer:
    """What finalization needs: the store, where outputs live, the price of a worker-hour (0: none) for the job's
    cost, and the webhook outbox (default: Redis beside a Redis store).

    Finalization only queues the event; a courier (`tide beat`, or `tide run` before it exits) signs and sends it.
    """

    store: JobStore
    storage: StorageConfig
    price_per_worker_hour: float
    clock: Callable[[], float] = time.time
    outbox: Outbox | None = None


def new_job_id(prefix: str = "job") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def submit_job(spec: JobSpec, store: JobStore, dispatcher: Dispatcher, storage: StorageConfig,
               clock: Callable[[], float] = time.time, outbox: Outbox | None = None) -> Job:
    """Create the job, validate and shard its input in one streaming pass, and enqueue one task per shard.

    The same idempotency key returns the job it first created. An unreadable input fails the job (status failed,
    with the reason); bad rows only become error rows.
    """
    job_id = new_job_id()
    job = create_job(spec, store, job_id, storage, clock)
    if job.id != job_id:  # the idempotency key's earlier job
        return job
    return start_job(job, store, dispatcher, storage, clock, outbox)


def create_job(spec: JobSpec, store: JobStore, job_id: str, storage: StorageConfig,
               clock: Callable[[], float] = time.time, owner: str | None = None,
               event_urls: list[str] | None = None) -> Job:
    """Record a new job `job_id` in `validating`; `start_job` then plans and enqueues it. Its deadline is watched
    from now on, so it expires on time even if no worker ever plans it.

    With an idempotency key already used, returns the job that key first created instead (another id).
    """
    if spec.idempotency_key:
        first = store.claim_idempotency(spec.idempotency_key, job_id)
        if first != job_id:
            return _await_job(store, first)
    now = clock()
    job = Job(id=job_id, spec=spec, created_at=now, expires_at=now + window_seconds(spec.completion_window),
              output_prefix=resolve(spec.output, storage).child(job_id).uri, owner=owner,
              event_urls=list(event_urls or []))
    store.put_job(job)
    leases = leases_for(store)
    if leases is not None:
        leases.watch_deadline(job.id, job.expires_at)
    return job


def start_job(job: Job, store: JobStore, dispatcher: Dispatcher, storage: StorageConfig,
              clock: Callable[[], float] = time.time, outbox: Outbox | None = None) -> Job:
    """Validate and shard a created job's input in one streaming pass, then enqueue one task per shard.

    An unreadable input, or an OpenAI batch whose file is invalid, fails the job (and sends its `failed` event).
    """
    try:
        plan = plan_job(job.spec, storage)
    except (StorageError, OSError, ValueError) as exc:
        return _fail(job.id, store, clock, outbox, error=str(exc))
    if plan.refused:
        return _fail(job.id, store, clock, outbox, errors=_file_errors(plan, job.spec))
    return fan_out(job, plan, store, dispatcher, clock)


def plan_created(job_id: str, store: JobStore, dispatcher: Dispatcher, storage: StorageConfig,
                 clock: Callable[[], float] = time.time, outbox: Outbox | None = None) -> Job:
    """`start_job` for a job created elsewhere (the API), run where the broker redelivers it if its process dies.

    A job already planned (or ended, or cancelled before it was planned) is left as it is, so a second delivery
    does nothing.
    """
    job = store.get_job(job_id)
    if job.status != JobStatus.VALIDATING or job.num_shards:
        return job
    return start_job(job, store, dispatcher, storage, clock, outbox)


def _file_errors(plan: Plan, spec: JobSpec) -> list[SampleError]:
    errors = [SampleError(line=e.line, code=e.code, message=e.message, param=e.param) for e in plan.file_errors]
    if plan.too_many_rows:
        errors.append(SampleError(line=None, code="too_many_requests", param="input_file_id",
                                  message=f"the file holds more than {spec.max_requests} requests, the most one "
                                          "batch may hold"))
    return errors


def _fail(job_id: str, store: JobStore, clock: Callable[[], float], outbox: Outbox | None,
          error: str | None = None, errors: list[SampleError] | None = None) -> Job:
    """A job that cannot run: `failed` with the reason, unless a cancel or the reaper ended it first."""
    moved = []

    def fail(j: Job) -> Job | None:
        moved.clear()
        if j.status != JobStatus.VALIDATING:
            return None
        moved.append(True)
        return j.moved_to(JobStatus.FAILED, clock(), error=error, sample_errors=errors or [])

    job = store.update_job(job_id, fail)
    if moved:
        leases = leases_for(store)
        if leases is not None:
            leases.drop_deadline(job_id)
        notify(job, outbox or outbox_for(store), clock())
    return job


def fan_out(job: Job, plan: Plan, store: JobStore, dispatcher: Dispatcher,
            clock: Callable[[], float] = time.time) -> Job:
    """Record a planned job's shards, move it to `in_progress` and enqueue one task per shard (the second half of
    `start_job`, apart so that the control-plane benchmark can time planning and dispatch each)."""
    # Cancelled (or expired by the reaper) while validating: its shards are cancelled and nothing is sent.
    stopped = store.get_job(job.id).status != JobStatus.VALIDATING
    initial = ShardStatus.CANCELLED if stopped else ShardStatus.PENDING
    store.put_shards(job.id, [ShardState(index=s.index, num_rows=s.num_rows, status=initial,
                                         task_id=shard_task_id(job.id, s.index)) for s in plan.shards])
    sample = [SampleError(line=e.line, code=e.code, message=e.message, param=e.param) for e in plan.first_errors]

    def start(j: Job) -> Job:
        changes = dict(num_shards=len(plan.shards), request_counts=RequestCounts(total=plan.total_rows),
                       sample_errors=sample)
        if j.status != JobStatus.VALIDATING:
            return j.model_copy(update=changes)
        return j.moved_to(JobStatus.IN_PROGRESS, clock(), **changes)

    job = store.update_job(job.id, start)
    if job.status == JobStatus.IN_PROGRESS:
        tasks = [ShardTask(job_id=job.id, spec=job.spec, format=plan.format, shard=shard,
                           output_prefix=job.output_prefix, deadline=job.expires_at) for shard in plan.shards]
        leases = leases_for(store)
        if leases is not None:  # what a reaper needs: the tasks to send again (the deadline is watched already)
            leases.put_tasks(job.id, tasks)
        for task in tasks:
            dispatcher.send_shard(task)
    if not plan.shards or stopped:
        dispatcher.send_finalize(job.id, job.spec.model)
    logger.info("job %s: %d rows (%d invalid) in %d shards", job.id, plan.total_rows, plan.invalid_rows,
                len(plan.shards))
    return job


def _await_job(store: JobStore, job_id: str, timeout_s: float = 10.0) -> Job:
    """The job behind an idempotency key; its creator may not have written it yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return store.get_job(job_id)
        except JobNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def job_status(store: JobStore, job_id: str) -> Job:
    """The job with live request counts and token usage summed over its shards."""
    return with_counts(store.get_job(job_id), store.get_shards(job_id))


def cancel_job(store: JobStore, dispatcher: Dispatcher, job_id: str, clock: Callable[[], float] = time.time,
               finalizer: Finalizer | None = None) -> Job:
    """Stop a job: pending shards are revoked and marked cancelled, running ones abort at their next check.

    Finished parts are kept; finalization writes the summary and moves the job to `cancelled`. A job no worker has
    planned yet is finalized here with `finalizer` (else by a worker of its model), so it ends even if none serves it.
    """
    before = []

    def cancelling(j: Job) -> Job | None:
        before[:] = [j]
        return j.moved_to(JobStatus.CANCELLING, clock()) if j.status in (JobStatus.VALIDATING,
                                                                         JobStatus.IN_PROGRESS) else None

    job = store.update_job(job_id, cancelling)
    if job.status != JobStatus.CANCELLING:
        return job_status(store, job_id)
    if before[0].status == JobStatus.VALIDATING:  # a planner running now cancels its shards and finalizes too
        if finalizer is not None:
            return finalize_job(job_id, finalizer)
        dispatcher.send_finalize(job_id, job.spec.model)
        return job_status(store, job_id)
    pending = [s for s in store.get_shards(job_id) if s.status == ShardStatus.PENDING]
    dispatcher.revoke([s.task_id for s in pending if s.task_id])
    for shard in pending:
        remaining = store.finish_shard(job_id, shard.index, lambda s: s.model_copy(
            update={"status": ShardStatus.CANCELLED, "finished_at": clock()})
            if s.status == ShardStatus.PENDING else None)
        if remaining == 0:
            dispatcher.send_finalize(job_id, job.spec.model)
    return job_status(store, job_id)


def finalize_job(job_id: str, finalizer: Finalizer) -> Job:
    """Write summary.json, move the job to its terminal status, and send the webhook. Safe to call twice: only the
    call that ends the job sends its events.

    A job never planned ends here when cancelled, or at its deadline as `expired` (the reaper's `expire_unplanned`).
    """
    store, clock = finalizer.store, finalizer.clock
    job = store.get_job(job_id)
    if job.status.terminal:
        return job
    if job.status in (JobStatus.VALIDATING, JobStatus.IN_PROGRESS):  # a planner seeing this starts nothing
        job = store.update_job(job_id, lambda j: j.moved_to(JobStatus.FINALIZING, clock())
                               if j.status in (JobStatus.VALIDATING, JobStatus.IN_PROGRESS) else None)
        if job.status.terminal:
            return job
    shards = store.get_shards(job_id)
    final = _final_status(job, shards)
    job = with_counts(job, shards)
    prefix = resolve(job.output_prefix, finalizer.storage)
    summary_location = prefix.child(SUMMARY_NAME)
    summary = build_summary(job.model_copy(update={"status": final}), shards, prefix, clock(),
                            finalizer.price_per_worker_hour)
    summary_location.write_bytes(json.dumps(summary, indent=2).encode())
    write_report(prefix, summary)  # report.html beside it
    if job.spec.endpoint is not None:  # an OpenAI batch: its output and error files exist before it is terminal
        write_openai_files(prefix, job.id, job.spec.endpoint, job.spec.model)
    moved = []

    def end(j: Job) -> Job | None:
        moved.clear()
        if j.status.terminal:
            return None
        moved.append(True)
        return with_counts(j, shards).moved_to(final, clock(), summary_uri=summary_location.uri)

    job = store.update_job(job_id, end)
    leases = leases_for(store)
    if leases is not None:
        leases.drop_deadline(job_id)
    if moved:
        notify(job, finalizer.outbox or outbox_for(store), clock())
    return job


def _final_status(job: Job, shards: list[ShardState]) -> JobStatus:
    if job.status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
        return JobStatus.CANCELLED
    if job.in_progress_at is None or any(s.status == ShardStatus.EXPIRED for s in shards):
        return JobStatus.EXPIRED  # never planned: only the reaper finalizes such a job, at its deadline
    return JobStatus.COMPLETED


def notify(job: Job, outbox: Outbox | None, now: float) -> None:
    """Queue the events of a job that just ended: Tide's event to its `webhook_url`, OpenAI's to the endpoints its
    API key configured. Each is signed with the key's own secret where it has one."""
    if not job.spec.webhook_url and not job.event_urls:
        return
    if outbox is None:
        logger.error("job %s: no webhook outbox beside this store; its events are not sent", job.id)
        return
    if job.spec.webhook_url:
        type, data = job_event(job)
        queue_delivery(outbox, new_delivery(job.id, job.spec.webhook_url, type, data, now, signer=job.owner))
    for url in job.event_urls:
        queue_delivery(outbox, openai_delivery(job.id, url, JOB_EVENTS[job.status.value], job.id, now,
                                               signer=job.owner))
