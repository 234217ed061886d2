"""The end of a shard attempt: its parts written and its final state recorded, both only while its claim still owns
the shard (a newer attempt's token fences an older one out); the job's last shard enqueues finalization."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tide.engine.embeddings import EMBED_TASK
from tide.jobs.embedding_output import write_embeddings
from tide.jobs.leases.book import Lease
from tide.jobs.metrics import shard_counters
from tide.jobs.report.series import write_series
from tide.jobs.shards.claim import owns
from tide.jobs.shards.context import ClaimContext
from tide.jobs.shards.outcome import Outcome
from tide.jobs.specs import ShardTask
from tide.jobs.state import EngineFigures, ShardState, ShardStatus
from tide.jobs.storage import resolve
from tide.jobs.writers import write_errors, write_results

logger = logging.getLogger("tide.worker")


def commit(ctx: ClaimContext, task: ShardTask, outcome: Outcome, lease: Lease, lost: threading.Event,
           figures: Callable[[], EngineFigures], error: str | None = None) -> ShardStatus | None:
    """Write the shard's parts and record it, unless a newer attempt took the shard over."""
    if not owns(ctx, lease, lost):
        logger.warning("shard %s/%d attempt %d lost its lease; its results are dropped for the newer attempt's",
                       task.job_id, task.shard.index, lease.token)
        return None
    started = time.perf_counter()
    prefix = resolve(task.output_prefix, ctx.storage)
    write = write_embeddings if task.spec.task == EMBED_TASK else write_results
    write(prefix, task.shard.index, outcome.results)
    write_errors(prefix, task.shard.index, outcome.errors)
    if outcome.series.samples:
        write_series(prefix, task.shard.index, ctx.worker, outcome.series)
    return finish(ctx, task, outcome, lease.token, figures, error, write_s=time.perf_counter() - started)


def finish(ctx: ClaimContext, task: ShardTask, outcome: Outcome, token: int, figures: Callable[[], EngineFigures],
           error: str | None = None, write_s: float | None = None) -> ShardStatus | None:
    """Record the shard's final state, if claim `token` still owns it, with its engine's `figures` (running totals
    read now); whoever finishes the job's last shard enqueues finalization, exactly once."""
    engine = figures()

    def change(shard: ShardState) -> ShardState | None:
        if shard.attempt is not None and shard.attempt != token:
            return None  # fenced: a newer attempt owns the shard
        return shard.model_copy(update={"status": outcome.status, "finished_at": ctx.clock(),
                                        "progress": outcome.progress, "engine": engine, "error": error,
                                        "worker": shard.worker or ctx.worker, "write_s": write_s})

    remaining = ctx.store.finish_shard(task.job_id, task.shard.index, change)
    if remaining is None:
        return None
    ctx.store.add_counters(shard_counters(task.spec.model, outcome.progress, [r.ttft_s for r in outcome.results],
                                          [r.tpot_s for r in outcome.results]))
    logger.info("shard %s/%d %s: %d completed, %d failed; engine batch occupancy %.0f%%, prefix-cache hit rate "
                "%.0f%%", task.job_id, task.shard.index, outcome.status.value, outcome.progress.completed,
                outcome.progress.failed, 100 * engine.mean_batch_occupancy, 100 * engine.prefix_cache_hit_rate)
    if remaining == 0:
        ctx.dispatcher.send_finalize(task.job_id, task.spec.model)
    return outcome.status
