"""Run one shard: claim it under a lease, read and validate its rows, stream them into the engine, write its parts
(fenced by the lease token), finish it. Or, for the reaper, expire it.

Plain code called by the Celery task, by `tide run` and by the reaper; it reaches the engine only through the
context's `EngineClient`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tide.jobs.dispatch import ShardRetry
from tide.jobs.leases.book import Lease
from tide.jobs.shards.claim import cancelled, claim, hold, release, stop_status
from tide.jobs.shards.commit import commit, finish
from tide.jobs.shards.context import ClaimContext, ShardContext
from tide.jobs.shards.error_rows import exhausted, set_aside
from tide.jobs.shards.outcome import Outcome, expire
from tide.jobs.shards.reading import read_shard_rows
from tide.jobs.shards.stream import generate
from tide.jobs.specs import ShardTask
from tide.jobs.state import EngineFigures, ShardProgress, ShardState, ShardStatus

logger = logging.getLogger("tide.worker")


def run_shard(task: ShardTask, ctx: ShardContext) -> ShardStatus | None:
    """Run `task` to a terminal shard state; None when another attempt owns the shard or it was already finished.

    With a lease book the claim holds a lease (renewed by `ctx.keeper`) whose token fences every commit; a failed
    attempt with attempts left is sent again. Without one (`tide run`) it raises ShardRetry instead.
    """
    lease, shard = claim(ctx, task)
    if shard is None:
        return None
    lost = hold(ctx, lease)
    try:
        return _attempt(ctx, task, shard, lease, lost)
    except Exception as exc:
        return _failed(ctx, task, shard, lease, exc, ctx.service.figures)
    finally:
        release(ctx, lease)


def expire_shard(task: ShardTask, ctx: ClaimContext) -> ShardStatus | None:
    """End a shard of a job past its deadline that no live worker holds: its unfinished rows become `batch_expired`
    error rows (finished parts are kept), or it is cancelled if its job is. None when an attempt owns it again."""
    lease, shard = claim(ctx, task)
    if shard is None:
        return None
    try:
        # No engine ran anything here: the shard's engine figures stay empty.
        if cancelled(ctx, task):
            return finish(ctx, task, Outcome(status=ShardStatus.CANCELLED), lease.token, EngineFigures)
        rows, errors = read_shard_rows(task, ctx.storage)
        outcome = expire(Outcome(status=ShardStatus.EXPIRED, errors=errors), rows)
        return commit(ctx, task, outcome, lease, threading.Event(), EngineFigures)
    except Exception as exc:
        return _failed(ctx, task, shard, lease, exc, EngineFigures)
    finally:
        release(ctx, lease)


def _attempt(ctx: ShardContext, task: ShardTask, shard: ShardState, lease: Lease,
             lost: threading.Event) -> ShardStatus | None:
    stop = stop_status(ctx, task)
    if stop == ShardStatus.CANCELLED:
        return finish(ctx, task, Outcome(status=stop), lease.token, ctx.service.figures)
    rows, errors = read_shard_rows(task, ctx.storage)
    if stop == ShardStatus.EXPIRED:
        outcome = expire(Outcome(status=stop, errors=errors), rows)
        return commit(ctx, task, outcome, lease, lost, ctx.service.figures)
    rows, errors = set_aside(rows, errors, shard.poisoned_rows)
    if shard.runs > ctx.max_attempts:
        reason = f"shard abandoned after {ctx.max_attempts} attempts"
        errors = errors + exhausted(rows, reason)
        outcome = Outcome(status=ShardStatus.FAILED, errors=errors, progress=ShardProgress(failed=len(errors)))
        return commit(ctx, task, outcome, lease, lost, ctx.service.figures, error=reason)
    careful = shard.lost > 0 and ctx.leases is not None
    with ctx.gate.enter(careful):
        outcome = generate(ctx, task, rows, errors, lease, careful=careful, lost=lost)
    return commit(ctx, task, outcome, lease, lost, ctx.service.figures)


def _failed(ctx: ClaimContext, task: ShardTask, shard: ShardState, lease: Lease, exc: Exception,
            figures: Callable[[], EngineFigures]) -> ShardStatus | None:
    """An attempt that raised: sent again while attempts are left (or ShardRetry without a lease book), else the
    shard fails with the reason."""
    job_id, index = task.job_id, task.shard.index
    if shard.runs < ctx.max_attempts:
        logger.warning("shard %s/%d attempt %d failed: %s; retrying", job_id, index, lease.token, exc)
        if ctx.leases is None:
            raise ShardRetry(str(exc)) from exc
        time.sleep(ctx.retry_delay_s)  # still under the lease: if this worker dies now, the reaper sends it
        release(ctx, lease)
        ctx.dispatcher.send_shard(task)
        return None
    logger.exception("shard %s/%d failed on its last attempt", job_id, index)
    failed = Outcome(status=ShardStatus.FAILED, progress=ShardProgress(failed=task.shard.num_rows))
    return finish(ctx, task, failed, lease.token, figures, error=f"{type(exc).__name__}: {exc}")
