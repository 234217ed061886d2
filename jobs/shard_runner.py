"""Run one shard: claim it, read and validate its rows, stream them into the engine, write its parts, finish it.

Plain code called by the Celery task and by `tide run`; it reaches the engine only through an `EngineService`.
"""
from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jobs.dispatch import Dispatcher, ShardRetry
from jobs.ordering import group_by_prefix
from jobs.metrics import shard_counters
from jobs.planner import duplicate_error
from jobs.report.series import SeriesRecorder, write_series
from jobs.readers import iter_jsonl_lines, iter_parquet_rows
from jobs.rows import ErrorRow, PromptRow, parse_json_line, parse_row
from jobs.specs import ShardTask
from jobs.state import EngineFigures, JobStatus, ShardProgress, ShardState, ShardStatus
from jobs.storage import resolve
from jobs.store import JobStore
from jobs.writers import ResultRow, write_errors, write_results

logger = logging.getLogger("tide.worker")


@dataclass
class ShardContext:
    store: JobStore
    dispatcher: Dispatcher
    service: object  # workers.engine_service.EngineService (kept abstract: jobs/ never imports the engine)
    worker: str
    max_attempts: int = 3
    poll_s: float = 1.0
    group_prefixes: bool = True  # off only to measure what grouping gains (python -m tide.bench_prefix)
    clock: Callable[[], float] = time.time


@dataclass
class _Outcome:
    status: ShardStatus = ShardStatus.DONE
    results: list[ResultRow] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)
    progress: ShardProgress = field(default_factory=ShardProgress)
    series: SeriesRecorder = field(default_factory=SeriesRecorder)  # sampled each poll for the job's report


def run_shard(task: ShardTask, ctx: ShardContext) -> ShardStatus | None:
    """Run `task` to a terminal shard state; None when the shard was already finished elsewhere.

    Raises ShardRetry when this attempt failed but attempts remain.
    """
    job_id, index = task.job_id, task.shard.index
    attempt = ctx.store.incr_attempts(job_id, index)
    stop = _stop_status(ctx, task)
    if stop is not None:
        return _finish(ctx, task, _Outcome(status=stop), error=None)
    if not _claim(ctx, task):
        return None
    try:
        rows, errors = read_shard_rows(task)
        if attempt > ctx.max_attempts:
            return _give_up(ctx, task, rows, errors, f"shard abandoned after {ctx.max_attempts} attempts")
        outcome = _generate(ctx, task, rows, errors, attempt)
        prefix = resolve(task.output_prefix)
        write_results(prefix, index, outcome.results)
        write_errors(prefix, index, outcome.errors)
        write_series(prefix, index, ctx.worker, outcome.series)
    except Exception as exc:
        if attempt < ctx.max_attempts:
            logger.warning("shard %s/%d attempt %d failed: %s; retrying", job_id, index, attempt, exc)
            raise ShardRetry(str(exc)) from exc
        logger.exception("shard %s/%d failed on its last attempt", job_id, index)
        failed = _Outcome(status=ShardStatus.FAILED, progress=ShardProgress(failed=task.shard.num_rows))
        return _finish(ctx, task, failed, error=f"{type(exc).__name__}: {exc}")
    return _finish(ctx, task, outcome, error=None)


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


def _claim(ctx: ShardContext, task: ShardTask) -> bool:
    """pending -> running (or running -> running: a redelivery after a worker died mid-shard)."""
    def change(shard: ShardState) -> ShardState | None:
        if shard.status.terminal:
            return None
        return shard.model_copy(update={"status": ShardStatus.RUNNING, "worker": ctx.worker,
                                        "started_at": ctx.clock()})

    return ctx.store.update_shard(task.job_id, task.shard.index, change).status == ShardStatus.RUNNING


def _generate(ctx: ShardContext, task: ShardTask, rows: list[PromptRow], errors: list[ErrorRow],
              attempt: int) -> _Outcome:
    outcome = _Outcome(errors=errors)
    outcome.series.sample(ctx.clock(), outcome.progress, ctx.service, force=True)
    sink: queue.Queue = queue.Queue()
    by_id: dict[str, PromptRow] = {}
    for row in group_by_prefix(rows) if ctx.group_prefixes else rows:
        request_id = f"{task.job_id}:{task.shard.index}:{attempt}:{row.row}"
        try:
            ctx.service.submit(request_id, row.prompt, row.params, task.spec.priority, sink)
        except ValueError as exc:
            outcome.errors.append(ErrorRow(row.row, row.custom_id, "invalid_request",
                                           f"line {row.row + 1} (id {row.custom_id}): {exc}"))
            continue
        by_id[request_id] = row
    _collect(ctx, task, sink, by_id, outcome)
    return outcome


def _collect(ctx: ShardContext, task: ShardTask, sink: queue.Queue, by_id: dict[str, PromptRow],
             outcome: _Outcome) -> None:
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
            if stop is not None:
                outcome.status = stop
                for request_id in waiting:
                    ctx.service.abort(request_id)
    outcome.progress.failed = len(outcome.errors)
    outcome.series.sample(ctx.clock(), outcome.progress, ctx.service, force=True)


def _record(outcome: _Outcome, row: PromptRow, output) -> None:
    if output.error is not None:
        outcome.errors.append(ErrorRow(row.row, row.custom_id, "context_length_exceeded",
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


def _logprobs(logprobs) -> list[dict] | None:
    if logprobs is None:
        return None
    return [{"token_id": lp.token_id, "logprob": lp.logprob,
             "top": [{"token_id": t, "logprob": p} for t, p in lp.top]} for lp in logprobs]


def _give_up(ctx: ShardContext, task: ShardTask, rows: list[PromptRow], errors: list[ErrorRow],
             reason: str) -> ShardStatus | None:
    """Too many attempts (e.g. a shard that keeps killing its worker): every row becomes an error row."""
    errors = errors + [ErrorRow(r.row, r.custom_id, "attempts_exhausted", f"line {r.row + 1} (id {r.custom_id}): "
                                f"{reason}") for r in rows]
    prefix = resolve(task.output_prefix)
    write_results(prefix, task.shard.index, [])
    write_errors(prefix, task.shard.index, errors)
    outcome = _Outcome(status=ShardStatus.FAILED, errors=errors, progress=ShardProgress(failed=len(errors)))
    return _finish(ctx, task, outcome, error=reason)


def _finish(ctx: ShardContext, task: ShardTask, outcome: _Outcome, error: str | None) -> ShardStatus | None:
    """Record the shard's final state; whoever finishes the job's last shard enqueues finalization, exactly once."""
    figures: EngineFigures = ctx.service.figures()

    def change(shard: ShardState) -> ShardState:
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
