"""A shard's rows streamed through the engine: submitted, their outputs collected as they finish, progress
published and cancellation, expiry and a lost lease watched every `poll_s`."""
from __future__ import annotations

import queue
import threading

from tide.jobs.inputs import InputRow
from tide.jobs.leases.book import Lease
from tide.jobs.rows import ErrorRow
from tide.jobs.shards import error_rows
from tide.jobs.shards.claim import stop_status
from tide.jobs.shards.context import ShardContext
from tide.jobs.shards.outcome import Outcome, expire, record
from tide.jobs.specs import ShardTask
from tide.jobs.state import ShardStatus


def generate(ctx: ShardContext, task: ShardTask, rows: list[InputRow], errors: list[ErrorRow], lease: Lease,
             careful: bool, lost: threading.Event) -> Outcome:
    """Stream the rows into the engine. A re-run after a lapsed lease is careful: one row at a time, alone in the
    engine (`EngineGate`), each marked in flight first, so a row that kills the worker again is named by the reaper
    and set aside."""
    outcome = Outcome(errors=errors)
    outcome.series.sample(ctx.clock(), outcome.progress, ctx.service.load, force=True)
    ordered = ctx.order(rows)
    for batch in ([r] for r in ordered) if careful else [ordered]:
        if outcome.status != ShardStatus.DONE or lost.is_set():
            break
        if careful:
            ctx.leases.mark_inflight(lease, batch[0].row)
        _run_batch(ctx, task, batch, outcome, lease.token, lost)
    return expire(outcome, rows) if outcome.status == ShardStatus.EXPIRED else outcome


def _run_batch(ctx: ShardContext, task: ShardTask, rows: list[InputRow], outcome: Outcome, attempt: int,
               lost: threading.Event) -> None:
    sink: queue.Queue = queue.Queue()
    by_id: dict[str, InputRow] = {}
    for row in rows:
        request_id = f"{task.job_id}:{task.shard.index}:{attempt}:{row.row}"
        try:
            ctx.service.submit(request_id, row.prompt, row.params, task.spec.priority, sink)
        except ValueError as exc:
            outcome.errors.append(error_rows.refused(row, str(exc)))
            continue
        by_id[request_id] = row
    _collect(ctx, task, sink, by_id, outcome, lost)


def _collect(ctx: ShardContext, task: ShardTask, sink: queue.Queue, by_id: dict[str, InputRow],
             outcome: Outcome, lost: threading.Event) -> None:
    """Wait for this shard's outputs; publish progress and watch for cancel/expiry every `poll_s`."""
    waiting, next_poll = set(by_id), ctx.clock() + ctx.poll_s
    while waiting:
        try:
            outputs = sink.get(timeout=ctx.poll_s)
        except queue.Empty:
            outputs = []
        if isinstance(outputs, Exception):
            raise outputs
        finished_at = ctx.clock()  # one engine step's outputs finished together
        for output in outputs:
            waiting.discard(output.request_id)
            record(outcome, by_id[output.request_id], output, ctx.service, finished_at)
        if ctx.clock() >= next_poll:
            next_poll = ctx.clock() + ctx.poll_s
            _poll(ctx, task, outcome, waiting, lost)
    outcome.progress.failed = len(outcome.errors)
    outcome.series.sample(ctx.clock(), outcome.progress, ctx.service.load, force=True)


def _poll(ctx: ShardContext, task: ShardTask, outcome: Outcome, waiting: set[str], lost: threading.Event) -> None:
    """Publish progress; stop the shard's requests when its job is cancelled or expired, or its lease was lost."""
    outcome.progress.failed = len(outcome.errors)
    ctx.store.set_progress(task.job_id, task.shard.index, outcome.progress)
    outcome.series.sample(ctx.clock(), outcome.progress, ctx.service.load)
    stop = stop_status(ctx, task) if outcome.status == ShardStatus.DONE else None
    if stop is None and lost.is_set():
        stop = ShardStatus.CANCELLED  # another attempt owns the shard now; nothing of this one is kept
    if stop is not None:
        outcome.status = stop
        for request_id in waiting:
            ctx.service.abort(request_id)
