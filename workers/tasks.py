"""Celery tasks: thin wrappers that parse the JSON payload and call the plain job code."""
from __future__ import annotations

from celery import Celery

from tide.jobs.dispatch import ShardRetry
from tide.jobs.lifecycle import Finalizer, finalize_job, plan_created
from tide.jobs.shards.context import ShardContext
from tide.jobs.shards.runner import run_shard
from tide.jobs.specs import ShardTask
from tide.workers.celery_app import FINALIZE_TASK, PLAN_TASK, SHARD_TASK

RETRY_DELAY_S = 5


def register_tasks(app: Celery, shard_context: ShardContext, finalizer: Finalizer) -> None:
    """Bind the shard and finalize tasks to this worker's engine service and job store."""

    @app.task(name=SHARD_TASK, bind=True, max_retries=None)
    def run_shard_task(self, payload: dict) -> str | None:
        task = ShardTask.model_validate(payload)
        try:
            status = run_shard(task, shard_context)
        except ShardRetry as exc:  # the attempt cap lives in Redis (run_shard), not in Celery's retry count
            raise self.retry(exc=exc, countdown=RETRY_DELAY_S)
        return None if status is None else status.value

    @app.task(name=PLAN_TASK)
    def plan_task(job_id: str) -> str:
        return plan_created(job_id, shard_context.store, shard_context.dispatcher, shard_context.storage).status.value

    @app.task(name=FINALIZE_TASK)
    def finalize_task(job_id: str) -> str:
        return finalize_job(job_id, finalizer).status.value
