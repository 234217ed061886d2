"""Run one shard: claim it under a lease, read and validate its rows, stream them into the engine, write its parts
(fenced by the lease token), finish it.

Plain code called by the Celery task and by `tide run`; it reaches the engine only through an `EngineService`.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from tide.jobs.dispatch import Dispatcher, ShardRetry
from tide.jobs.leases.book import Lease, LeaseBook
from tide.jobs.leases.keeper import LeaseKeeper
from tide.jobs.ordering import group_by_prefix
from tide.jobs.metrics import shard_counters
from tide.jobs.planner import duplicate_error
from tide.jobs.report.series import SeriesRecorder, write_series
from tide.jobs.readers import iter_jsonl_lines, iter_parquet_rows
from tide.jobs.rows import ErrorRow, PromptRow, parse_json_line, parse_row
from tide.jobs.specs import ShardTask
from tide.jobs.state import EngineFigures, JobStatus, ShardProgress, ShardState, ShardStatus
from tide.jobs.storage import resolve
from tide.jobs.store import JobStore
from tide.jobs.writers import ResultRow, write_errors, write_results

logger = logging.getLogger("tide.worker")


@dataclass
class ShardContext:
    store: JobStore
    dispatcher: Dispatcher
    service: object  # workers.engine_service.EngineService (kept abstract: jobs/ never imports the engine)
    worker: str
    max_attempts: int = 3
    poll_s: float = 1.0
    group_prefixes: bool = True  # off only to measure what grouping gains (python -P -m tide.benchmarks.prefix)
    clock: Callable[[], float] = time.time
    leases: LeaseBook | None = None  # None for `tide run`: one process, nothing to take over
    keeper: LeaseKeeper | None = None  # renews this process's leases
    retry_delay_s: float = 5.0
    before_submit: Callable[[PromptRow], None] | None = None  # test hook: the poison-row fault test exits here
    gate: "EngineGate" = field(default_factory=lambda: EngineGate())  # one per process, like the engine


class EngineGate:
    """Careful re-runs have this process's engine to themselves (other shards wait, and a careful one waits for
    those running to finish), so a worker that dies during one was killed by the one row it had in flight."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._normal = self._careful_waiting = 0
        self._careful = False

    @contextmanager
    def enter(self, careful: bool):
        with self._cond:
            if careful:
                self._careful_waiting += 1
                self._cond.wait_for(lambda: not self._careful and self._normal == 0)
                self._careful_waiting -= 1
                self._careful = True
            else:
                self._cond.wait_for(lambda: not self._careful and self._careful_waiting == 0)
                self._normal += 1
        try:
            yield
        finally:
            with self._cond:
                if careful:
                    self._careful = False
                else:
                    self._normal -= 1
                self._cond.notify_all()


@dataclass
class _Outcome:
    status: ShardStatus = ShardStatus.DONE
    results: list[ResultRow] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)
    progress: ShardProgress = field(default_factory=ShardProgress)
    series: SeriesRecorder = field(default_factory=SeriesRecorder)  # sampled each poll for the job's report


def run_shard(task: ShardTask, ctx: ShardContext) -> ShardStatus | None:
    """Run `task` to a terminal shard state; None when another attempt owns the shard or it was already finished.

    With a lease book the claim holds a lease (renewed by `ctx.keeper`) whose token fences every commit; a failed
    attempt with attempts left is sent again. Without one (`tide run`) it raises ShardRetry instead.
    """
    lease = Lease(task.job_id, task.shard.index, ctx.store.incr_attempts(task.job_id, task.shard.index))
    if ctx.leases is not None:
        ctx.leases.grant(lease, ctx.clock())  # before the claim: a running shard always has a lease to lapse
    shard = _claim(ctx, task, lease.token)
    if shard is None:
        _release(ctx, lease)
        return None
    lost = ctx.keeper.hold(lease) if ctx.keeper is not None else threading.Event()
    try:
        return _attempt(ctx, task, shard, lease, lost)
    except Exception as exc:
        return _failed(ctx, task, shard, lease, exc)
    finally:
        _release(ctx, lease)


def _attempt(ctx: ShardContext, task: ShardTask, shard: ShardState, lease: Lease,
             lost: threading.Event) -> ShardStatus | None:
    stop = _stop_status(ctx, task)
    if stop == ShardStatus.CANCELLED:
        return _finish(ctx, task, _Outcome(status=stop), error=None, token=lease.token)
    rows, errors = read_shard_rows(task)
    if stop == ShardStatus.EXPIRED:
        return _commit(ctx, task, _expired(_Outcome(status=stop, errors=errors), rows), lease, lost)
    rows, errors = _set_aside(rows, errors, shard.poisoned_rows)
    if shard.runs > ctx.max_attempts:
        return _give_up(ctx, task, rows, errors, lease, lost, f"shard abandoned after {ctx.max_attempts} attempts")
    careful = shard.lost > 0 and ctx.leases is not None
    with ctx.gate.enter(careful):
        outcome = _generate(ctx, task, rows, errors, lease, careful=careful, lost=lost)
    return _commit(ctx, task, outcome, lease, lost)


def _failed(ctx: ShardContext, task: ShardTask, shard: ShardState, lease: Lease, exc: Exception) -> ShardStatus | None:
    job_id, index = task.job_id, task.shard.index
    if shard.runs < ctx.max_attempts:
        logger.warning("shard %s/%d attempt %d failed: %s; retrying", job_id, index, lease.token, exc)
        if ctx.leases is None:
            raise ShardRetry(str(exc)) from exc
        time.sleep(ctx.retry_delay_s)  # still under the lease: if this worker dies now, the reaper sends it
        _release(ctx, lease)
        ctx.dispatcher.send_shard(task)
        return None
    logger.exception("shard %s/%d failed on its last attempt", job_id, index)
    failed = _Outcome(status=ShardStatus.FAILED, progress=ShardProgress(failed=task.shard.num_rows))
    return _finish(ctx, task, failed, error=f"{type(exc).__name__}: {exc}", token=lease.token)


def read_shard_rows(task: ShardTask) -> tuple[list[PromptRow], list[ErrorRow]]:
    """The shard's rows, validated exactly as the planner validated them (duplicates come from the plan)."""
    location, shard, defaults = resolve(task.spec.input), task.shard, task.spec.sampling
    if task.format == "jsonl":
        parsed = (parse_json_line(line.data, line.row, defaults, task.spec.endpoint)
                  for line in iter_jsonl_lines(location, shard.start, shard.end, shard.first_row) if line.data)
    else:
        parsed = (parse_row(raw, row, defaults, task.spec.endpoint)
                  for row, raw in iter_parquet_rows(location, task.spec.columns, shard.start, shard.end))
    duplicates = set(shard.duplicate_rows)
    rows: list[PromptRow] = []
    errors: list[ErrorRow] = []
    for item in parsed:
        if isinstance(item, PromptRow) and item.row in duplicates:
            item = duplicate_error(item.row, item.custom_id)
        (errors if isinstance(item, ErrorRow) else rows).append(item)
    return rows, errors


def _stop_status(ctx: ShardContext, task: ShardTask) -> ShardStatus | None:
    """Why this shard must not (or no longer) run: its job is being cancelled, or its deadline passed."""
    if ctx.clock() > task.deadline:
        return ShardStatus.EXPIRED
    status = ctx.store.get_job(task.job_id).status
    if status in (JobStatus.CANCELLING, JobStatus.CANCELLED):
        return ShardStatus.CANCELLED
    return None


def _claim(ctx: ShardContext, task: ShardTask, token: int) -> ShardState | None:
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


def _live(ctx: ShardContext, task: ShardTask, shard: ShardState, now: float) -> bool:
    if ctx.leases is None or shard.attempt is None:
        return False
    return ctx.leases.held(Lease(task.job_id, task.shard.index, shard.attempt), now)


def _release(ctx: ShardContext, lease: Lease) -> None:
    if ctx.keeper is not None:
        ctx.keeper.drop(lease)
    if ctx.leases is not None:
        ctx.leases.release(lease)


def _owns(ctx: ShardContext, lease: Lease, lost: threading.Event) -> bool:
    """Whether this attempt may still commit: its lease was neither lost nor let lapse (fencing)."""
    return not lost.is_set() and (ctx.leases is None or ctx.leases.held(lease, ctx.clock()))


def _commit(ctx: ShardContext, task: ShardTask, outcome: _Outcome, lease: Lease, lost: threading.Event,
            error: str | None = None) -> ShardStatus | None:
    """Write the shard's parts and record it, unless a newer attempt took the shard over."""
    if not _owns(ctx, lease, lost):
        logger.warning("shard %s/%d attempt %d lost its lease; its results are dropped for the newer attempt's",
                       task.job_id, task.shard.index, lease.token)
        return None
    prefix = resolve(task.output_prefix)
    write_results(prefix, task.shard.index, outcome.results)
    write_errors(prefix, task.shard.index, outcome.errors)
    if outcome.series.samples:
        write_series(prefix, task.shard.index, ctx.worker, outcome.series)
    return _finish(ctx, task, outcome, error=error, token=lease.token)


def _set_aside(rows: list[PromptRow], errors: list[ErrorRow],
               poisoned: list[int]) -> tuple[list[PromptRow], list[ErrorRow]]:
    """Rows that were alone in the engine when a worker died (twice, counting the first crash) fail; the rest run."""
    if not poisoned:
        return rows, errors
    marked = set(poisoned)
    errors = errors + [ErrorRow(r.row, r.custom_id, "worker_crashed", f"line {r.row + 1} (id {r.custom_id}): the "
                                "worker process died while running this row; it was set aside so the rest could "
                                "finish") for r in rows if r.row in marked]
    return [r for r in rows if r.row not in marked], errors


def _expired(outcome: _Outcome, rows: list[PromptRow]) -> _Outcome:
    """The job's deadline passed: rows with neither a result nor an error become `batch_expired` error rows."""
    seen = {r.row_index for r in outcome.results} | {e.row for e in outcome.errors}
    outcome.errors += [ErrorRow(r.row, r.custom_id, "batch_expired", f"line {r.row + 1} (id {r.custom_id}): the "
                                "job's completion window ended before this row ran") for r in rows if r.row not in seen]
    outcome.progress.failed = len(outcome.errors)
    return outcome


def _generate(ctx: ShardContext, task: ShardTask, rows: list[PromptRow], errors: list[ErrorRow], lease: Lease,
              careful: bool, lost: threading.Event) -> _Outcome:
    """Stream the rows into the engine. A re-run after a lapsed lease is careful: one row at a time, alone in the
    engine (`EngineGate`), each marked in flight first, so a row that kills the worker again is named by the reaper
    and set aside."""
    outcome = _Outcome(errors=errors)
    outcome.series.sample(ctx.clock(), outcome.progress, ctx.service, force=True)
    ordered = group_by_prefix(rows) if ctx.group_prefixes else rows
    for batch in ([r] for r in ordered) if careful else [ordered]:
        if outcome.status != ShardStatus.DONE or lost.is_set():
            break
        if careful:
            ctx.leases.mark_inflight(lease, batch[0].row)
        _run_batch(ctx, task, batch, outcome, lease.token, lost)
    return _expired(outcome, rows) if outcome.status == ShardStatus.EXPIRED else outcome


def _run_batch(ctx: ShardContext, task: ShardTask, rows: list[PromptRow], outcome: _Outcome, attempt: int,
               lost: threading.Event) -> None:
    sink: queue.Queue = queue.Queue()
    by_id: dict[str, PromptRow] = {}
    for row in rows:
        request_id = f"{task.job_id}:{task.shard.index}:{attempt}:{row.row}"
        if ctx.before_submit is not None:
            ctx.before_submit(row)
        try:
            ctx.service.submit(request_id, row.prompt, row.params, task.spec.priority, sink)
        except ValueError as exc:
            outcome.errors.append(ErrorRow(row.row, row.custom_id, "invalid_request",
                                           f"line {row.row + 1} (id {row.custom_id}): {exc}"))
            continue
        by_id[request_id] = row
    _collect(ctx, task, sink, by_id, outcome, lost)


def _collect(ctx: ShardContext, task: ShardTask, sink: queue.Queue, by_id: dict[str, PromptRow],
             outcome: _Outcome, lost: threading.Event) -> None:
    """Wait for this shard's outputs; publish progress and watch for cancel/expiry every `poll_s`."""
    waiting, next_poll = set(by_id), ctx.clock() + ctx.poll_s
    while waiting:
        try:
            output = sink.get(timeout=ctx.poll_s)
        except queue.Empty:
            output = None
        if isinstance(output, Exception):
            raise output
        if output is not None:
            waiting.discard(output.request_id)
            _record(outcome, by_id[output.request_id], output)
        if ctx.clock() >= next_poll:
            next_poll = ctx.clock() + ctx.poll_s
            outcome.progress.failed = len(outcome.errors)
            ctx.store.set_progress(task.job_id, task.shard.index, outcome.progress)
            outcome.series.sample(ctx.clock(), outcome.progress, ctx.service)
            stop = _stop_status(ctx, task) if outcome.status == ShardStatus.DONE else None
            if stop is None and lost.is_set():
                stop = ShardStatus.CANCELLED  # another attempt owns the shard now; nothing of this one is kept
            if stop is not None:
                outcome.status = stop
                for request_id in waiting:
                    ctx.service.abort(request_id)
    outcome.progress.failed = len(outcome.errors)
    outcome.series.sample(ctx.clock(), outcome.progress, ctx.service, force=True)


def _record(outcome: _Outcome, row: PromptRow, output) -> None:
    if output.error is not None:
        outcome.errors.append(ErrorRow(row.row, row.custom_id, output.error_code or "context_length_exceeded",
                                       f"line {row.row + 1} (id {row.custom_id}): {output.error}"))
        return
    if output.finish_reason == "abort":  # cancelled or expired before it finished: neither a result nor an error
        return
    metrics = output.metrics
    for sample in output.outputs:
        outcome.results.append(ResultRow(
            custom_id=row.custom_id, row_index=row.row, sample_index=sample.index, text=sample.text,
            finish_reason=sample.finish_reason, prompt_tokens=metrics.prompt_tokens,
            completion_tokens=len(sample.token_ids), cached_prompt_tokens=metrics.cached_prompt_tokens,
            ttft_s=metrics.ttft, latency_s=metrics.e2e_latency, tpot_s=metrics.tpot,
            logprobs=_logprobs(sample.logprobs) if row.params.logprobs is not None else None))
    progress = outcome.progress
    progress.completed += 1
    progress.prompt_tokens += metrics.prompt_tokens
    progress.completion_tokens += metrics.completion_tokens
    progress.cached_prompt_tokens += metrics.cached_prompt_tokens
    progress.spec_proposed_tokens += metrics.spec_proposed_tokens
    progress.spec_accepted_tokens += metrics.spec_accepted_tokens


def _logprobs(logprobs) -> list[dict] | None:
    if logprobs is None:
        return None
    return [{"token_id": lp.token_id, "logprob": lp.logprob,
             "top": [{"token_id": t, "logprob": p} for t, p in lp.top]} for lp in logprobs]


def _give_up(ctx: ShardContext, task: ShardTask, rows: list[PromptRow], errors: list[ErrorRow], lease: Lease,
             lost: threading.Event, reason: str) -> ShardStatus | None:
    """Too many attempts (e.g. a shard that keeps killing its worker): every row becomes an error row."""
    errors = errors + [ErrorRow(r.row, r.custom_id, "attempts_exhausted", f"line {r.row + 1} (id {r.custom_id}): "
                                f"{reason}") for r in rows]
    outcome = _Outcome(status=ShardStatus.FAILED, errors=errors, progress=ShardProgress(failed=len(errors)))
    return _commit(ctx, task, outcome, lease, lost, error=reason)


def _finish(ctx: ShardContext, task: ShardTask, outcome: _Outcome, error: str | None,
            token: int) -> ShardStatus | None:
    """Record the shard's final state, if claim `token` still owns it; whoever finishes the job's last shard
    enqueues finalization, exactly once."""
    figures: EngineFigures = ctx.service.figures() if ctx.service is not None else EngineFigures()

    def change(shard: ShardState) -> ShardState | None:
        if shard.attempt is not None and shard.attempt != token:
            return None  # fenced: a newer attempt owns the shard
        return shard.model_copy(update={"status": outcome.status, "finished_at": ctx.clock(),
                                        "progress": outcome.progress, "engine": figures, "error": error,
                                        "worker": shard.worker or ctx.worker})

    remaining = ctx.store.finish_shard(task.job_id, task.shard.index, change)
    if remaining is None:
        return None
    ctx.store.add_counters(shard_counters(task.spec.model, outcome.progress, [r.ttft_s for r in outcome.results],
                                          [r.tpot_s for r in outcome.results]))
    logger.info("shard %s/%d %s: %d completed, %d failed; engine batch occupancy %.0f%%, prefix-cache hit rate "
                "%.0f%%", task.job_id, task.shard.index, outcome.status.value, outcome.progress.completed,
                outcome.progress.failed, 100 * figures.mean_batch_occupancy, 100 * figures.prefix_cache_hit_rate)
    if remaining == 0:
        ctx.dispatcher.send_finalize(task.job_id, task.spec.model)
    return outcome.status
