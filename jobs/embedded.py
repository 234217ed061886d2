"""`tide run`: the whole pipeline in one process, with an in-memory job store, local storage and a thread pool in
place of Redis, S3 and Celery. The shard, planning and finalization code is the same that workers run."""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tide.jobs.dispatch import ShardRetry, shard_task_id
from tide.jobs.engine_client import EngineClient
from tide.jobs.lifecycle import Finalizer, finalize_job, plan_created, submit_job
from tide.jobs.ordering import group_by_prefix
from tide.jobs.progress import wait_for_job
from tide.jobs.rows import PromptRow
from tide.jobs.shards.context import ShardContext
from tide.jobs.shards.runner import run_shard
from tide.jobs.specs import JobSpec, ShardTask
from tide.jobs.state import Job
from tide.jobs.storage import StorageConfig
from tide.jobs.store import MemoryJobStore
from tide.jobs.webhooks.courier import Courier, WebhookConfig
from tide.jobs.webhooks.outbox import MemoryOutbox

logger = logging.getLogger("tide.run")


class LocalDispatcher:
    """Runs shard and finalize tasks on a thread pool; `threads` shards in flight share the one engine."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tide-shard")
        self._revoked: set[str] = set()
        self.failures: list[BaseException] = []
        self.shard_context: ShardContext | None = None
        self.finalizer: Finalizer | None = None

    def send_shard(self, task: ShardTask) -> None:
        self._pool.submit(self._guarded, self._run_shard, task)

    def send_finalize(self, job_id: str, model: str) -> None:
        self._pool.submit(self._guarded, finalize_job, job_id, self.finalizer)

    def send_plan(self, job_id: str, model: str) -> None:
        ctx = self.shard_context
        self._pool.submit(self._guarded, plan_created, job_id, ctx.store, self, ctx.storage, ctx.clock,
                          self.finalizer.outbox)

    def revoke(self, task_ids: list[str]) -> None:
        self._revoked.update(task_ids)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run_shard(self, task: ShardTask) -> None:
        if shard_task_id(task.job_id, task.shard.index) in self._revoked:
            return
        try:
            run_shard(task, self.shard_context)
        except ShardRetry:
            self.send_shard(task)

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # surfaced by `check_failures` in the waiting thread
            logger.exception("local task failed")
            self.failures.append(exc)

    def check_failures(self) -> None:
        if self.failures:
            raise RuntimeError(f"tide run failed: {self.failures[0]}") from self.failures[0]


def run_embedded(spec: JobSpec, service: EngineClient, *, storage: StorageConfig, webhooks: WebhookConfig,
                 price_per_worker_hour: float, shards_in_flight: int = 2, show_progress: bool = True,
                 order: Callable[[list[PromptRow]], list[PromptRow]] = group_by_prefix) -> Job:
    """Submit `spec` to an in-process pipeline around `service` and wait for it to end; its webhook (if any) is
    delivered on the retry schedule before this returns. `order` is the order a shard's rows enter the engine in."""
    store = MemoryJobStore()
    dispatcher = LocalDispatcher(shards_in_flight)
    dispatcher.shard_context = ShardContext(store=store, dispatcher=dispatcher, service=service, storage=storage,
                                            worker="embedded", order=order)
    outbox = MemoryOutbox()
    dispatcher.finalizer = Finalizer(store=store, storage=storage, price_per_worker_hour=price_per_worker_hour,
                                     outbox=outbox)
    try:
        job = submit_job(spec, store, dispatcher, storage, outbox=outbox)
        job = wait_for_job(store, job.id, poll_s=0.5, show=show_progress, check=dispatcher.check_failures)
    finally:
        dispatcher.close()
    Courier(outbox, webhooks).drain()
    return job
