"""A shard attempt's claim: a lease with a fencing token, granted before the shard moves to `running`, renewed while
the attempt runs and released when it ends. Whatever the attempt commits is fenced by that token (`commit`).
"""
from __future__ import annotations

import threading

from tide.jobs.leases.book import Lease
from tide.jobs.shards.context import ClaimContext
from tide.jobs.specs import ShardTask
from tide.jobs.state import JobStatus, ShardState, ShardStatus


def claim(ctx: ClaimContext, task: ShardTask) -> tuple[Lease, ShardState | None]:
    """A new attempt's lease and the shard it now runs; None for the shard (and the lease released) when another
    attempt owns it or it already finished."""
    lease = Lease(task.job_id, task.shard.index, ctx.store.incr_attempts(task.job_id, task.shard.index))
    if ctx.leases is not None:
        ctx.leases.grant(lease, ctx.clock())  # before the claim: a running shard always has a lease to lapse
    shard = _take(ctx, task, lease.token)
    if shard is None:
        release(ctx, lease)
    return lease, shard


def _take(ctx: ClaimContext, task: ShardTask, token: int) -> ShardState | None:
    """pending -> running, or running -> running when the previous claim's lease has lapsed (its worker died).

    A second delivery of a shard whose lease is live is refused: one shard runs once at a time.
    """
    now = ctx.clock()

    def change(shard: ShardState) -> ShardState | None:
        if shard.status.terminal or (shard.status == ShardStatus.RUNNING and _live(ctx, task, shard, now)):
            return None
        return shard.model_copy(update={"status": ShardStatus.RUNNING, "worker": ctx.worker, "started_at": now,
                                        "attempt": token, "runs": shard.runs + 1})

    shard = ctx.store.update_shard(task.job_id, task.shard.index, change)
    return shard if shard.status == ShardStatus.RUNNING and shard.attempt == token else None


def _live(ctx: ClaimContext, task: ShardTask, shard: ShardState, now: float) -> bool:
    if ctx.leases is None or shard.attempt is None:
        return False
    return ctx.leases.held(Lease(task.job_id, task.shard.index, shard.attempt), now)


def hold(ctx: ClaimContext, lease: Lease) -> threading.Event:
    """Keep the lease renewed while the attempt runs; the event is set if it is lost to a newer attempt."""
    return ctx.keeper.hold(lease) if ctx.keeper is not None else threading.Event()


def release(ctx: ClaimContext, lease: Lease) -> None:
    if ctx.keeper is not None:
        ctx.keeper.drop(lease)
    if ctx.leases is not None:
        ctx.leases.release(lease)


def owns(ctx: ClaimContext, lease: Lease, lost: threading.Event) -> bool:
    """Whether this attempt may still commit: its lease was neither lost nor let lapse (fencing)."""
    return not lost.is_set() and (ctx.leases is None or ctx.leases.held(lease, ctx.clock()))


def stop_status(ctx: ClaimContext, task: ShardTask) -> ShardStatus | None:
    """Why this shard must not (or no longer) run: its job is being cancelled, or its deadline passed."""
    if ctx.clock() > task.deadline:
        return ShardStatus.EXPIRED
    if cancelled(ctx, task):
        return ShardStatus.CANCELLED
    return None


def cancelled(ctx: ClaimContext, task: ShardTask) -> bool:
    return ctx.store.get_job(task.job_id).status in (JobStatus.CANCELLING, JobStatus.CANCELLED)
