"""The reaper: sends again the shards whose lease lapsed (their worker died or hung), and expires jobs past their
deadline whether or not a worker touches them. Every worker and the scheduler run one; sweeps may overlap, since
each lapsed lease is taken back by exactly one of them and every shard change is a compare-and-set.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from tide.jobs.dispatch import Dispatcher, shard_task_id
from tide.jobs.leases.book import Lease, LeaseBook
from tide.jobs.lifecycle import Finalizer, finalize_job
from tide.jobs.periodic import Periodic
from tide.jobs.planner import plan_job
from tide.jobs.shards.context import ClaimContext
from tide.jobs.shards.outcome import Outcome, expire
from tide.jobs.shards.reading import read_shard_rows
from tide.jobs.shards.runner import expire_shard
from tide.jobs.specs import ShardTask
from tide.jobs.state import Job, JobStatus, RequestCounts, ShardState, ShardStatus
from tide.jobs.storage import StorageConfig, resolve
from tide.jobs.store import JobNotFound, JobStore
from tide.jobs.writers import write_errors

logger = logging.getLogger("tide.reaper")


class _FinalizeHere:
    """The reaper's dispatcher: shards go to the queue, but a job it expires is finalized right here, so an expired
    job ends even when no worker serves its model."""

    def __init__(self, dispatcher: Dispatcher, finalizer: Finalizer) -> None:
        self.dispatcher, self.finalizer = dispatcher, finalizer

    def send_shard(self, task: ShardTask) -> None:
        self.dispatcher.send_shard(task)

    def send_finalize(self, job_id: str, model: str) -> None:
        finalize_job(job_id, self.finalizer)

    def send_plan(self, job_id: str, model: str) -> None:
        self.dispatcher.send_plan(job_id, model)

    def revoke(self, task_ids: list[str]) -> None:
        self.dispatcher.revoke(task_ids)


def expire_unplanned(job_id: str, finalizer: Finalizer) -> Job:
    """End a job past its deadline that no worker planned (none serves its model) as `expired`, each of its
    requests a `batch_expired` error row as a planned job's unfinished ones are. Only the caller that moves it out
    of `validating` reads its input, so reapers sweeping at once list each request once."""
    store, clock = finalizer.store, finalizer.clock
    moved = []

    def finalizing(j: Job) -> Job | None:
        moved[:] = [j.status == JobStatus.VALIDATING]
        return j.moved_to(JobStatus.FINALIZING, clock()) if moved[0] else None

    job = store.update_job(job_id, finalizing)
    if not moved[0]:
        return job
    try:
        _list_expired(job, finalizer)
    except Exception as exc:  # whatever listing meets, the job still ends on time
        logger.warning("job %s expired unplanned; its requests could not be listed: %s", job_id, exc)
    return finalize_job(job_id, finalizer)


def _list_expired(job: Job, finalizer: Finalizer) -> None:
    """Plan the job's input as a worker would and write every shard as expired (an invalid file lists nothing)."""
    plan = plan_job(job.spec, finalizer.storage)
    if plan.refused:
        return
    shards = [_expired_shard(ShardTask(job_id=job.id, spec=job.spec, format=plan.format, shard=shard,
                                       output_prefix=job.output_prefix, deadline=job.expires_at),
                             finalizer.storage, finalizer.clock())
              for shard in plan.shards]
    finalizer.store.put_shards(job.id, shards)
    finalizer.store.update_job(job.id, lambda j: j.model_copy(update={
        "num_shards": len(shards), "request_counts": RequestCounts(total=plan.total_rows)}))


def _expired_shard(task: ShardTask, storage: StorageConfig, now: float) -> ShardState:
    rows, errors = read_shard_rows(task, storage)
    outcome = expire(Outcome(status=ShardStatus.EXPIRED, errors=errors), rows)
    write_errors(resolve(task.output_prefix, storage), task.shard.index, outcome.errors)
    return ShardState(index=task.shard.index, num_rows=task.shard.num_rows, status=ShardStatus.EXPIRED,
                      task_id=shard_task_id(task.job_id, task.shard.index), finished_at=now,
                      progress=outcome.progress)


class Reaper:
    def __init__(self, store: JobStore, dispatcher: Dispatcher, book: LeaseBook, finalizer: Finalizer,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.dispatcher, self.book, self.clock = store, dispatcher, book, clock
        self.finalizer = finalizer
        self.context = ClaimContext(store=store, dispatcher=_FinalizeHere(dispatcher, finalizer),
                                    storage=finalizer.storage, worker=f"reaper-{os.getpid()}@{socket.gethostname()}",
                                    clock=clock, leases=book)

    def start(self, interval_s: float) -> Periodic:
        """Sweep every `interval_s` on a thread of its own (every `tide worker` and `tide beat` runs one); stop it
        with the returned thread's `stop()`."""
        return Periodic(self.sweep, interval_s, "tide-reaper", logger, "reaper sweep failed").start()

    def sweep(self) -> list[Lease]:
        """One pass; returns the leases whose shards it sent again."""
        now = self.clock()
        recovered = [lease for lease in self.book.lapsed(now) if self._recover(lease)]
        for job_id in self.book.due_deadlines(now):
            self._expire(job_id, now)
        return recovered

    def _recover(self, lease: Lease) -> bool:
        if not self.book.take(lease):
            return False  # another reaper took it
        row = self.book.inflight(lease)
        self.book.release(lease)
        changed = []

        def change(shard: ShardState) -> ShardState | None:
            changed.clear()
            if shard.status != ShardStatus.RUNNING or shard.attempt != lease.token:
                return None  # finished, or already claimed again: nothing was lost
            poisoned = shard.poisoned_rows + ([row] if row is not None and row not in shard.poisoned_rows else [])
            changed.append(True)
            return shard.model_copy(update={"lost": shard.lost + 1, "poisoned_rows": poisoned})

        try:
            self.store.update_shard(lease.job_id, lease.index, change)
            task = self.book.get_task(lease.job_id, lease.index)
        except JobNotFound:
            return False
        if not changed or task is None:
            return False
        logger.warning("shard %s/%d: the lease of attempt %d lapsed (its worker died or hung); sent again%s",
                       lease.job_id, lease.index, lease.token,
                       f", row {row} set aside" if row is not None else "")
        self.dispatcher.send_shard(task)
        return True

    def _expire(self, job_id: str, now: float) -> None:
        """Past its deadline: every shard no live worker holds becomes `expired`, its unfinished rows
        `batch_expired` error rows (finished parts are kept); the last one finalizes the job. A job no worker has
        planned (none serves its model) is finalized here as `expired`."""
        try:
            job = self.store.get_job(job_id)
        except JobNotFound:
            self.book.drop_deadline(job_id)
            return
        if job.status.terminal:
            self.book.drop_deadline(job_id)
            return
        if job.expires_at > now:
            return
        if job.status == JobStatus.VALIDATING:
            expire_unplanned(job_id, self.finalizer)
            return
        if job.status != JobStatus.IN_PROGRESS:
            return  # a cancel or a finalization in flight ends it
        for shard in self.store.get_shards(job_id):
            if shard.status.terminal or (shard.status == ShardStatus.RUNNING and shard.attempt is not None
                                         and self.book.held(Lease(job_id, shard.index, shard.attempt), now)):
                continue  # a live worker holds it and expires it at its next poll
            task = self.book.get_task(job_id, shard.index)
            if task is not None:
                expire_shard(task, self.context)
