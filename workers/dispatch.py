"""The Celery implementation of `tide.jobs.dispatch.Dispatcher`: tasks by name, routed to the job's model queue."""
from __future__ import annotations

from celery import Celery

from tide.jobs.dispatch import shard_task_id
from tide.jobs.specs import ShardTask, queue_for
from tide.workers.celery_app import FINALIZE_TASK, PLAN_TASK, SHARD_TASK, celery_priority


class CeleryDispatcher:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def send_shard(self, task: ShardTask) -> None:
        self.app.send_task(SHARD_TASK, args=[task.model_dump(mode="json")],
                           task_id=shard_task_id(task.job_id, task.shard.index),
                           queue=queue_for(task.spec.model), priority=celery_priority(task.spec.priority))

    def send_finalize(self, job_id: str, model: str) -> None:
        # Highest priority: finalization is cheap and should not wait behind other jobs' shards.
        self.app.send_task(FINALIZE_TASK, args=[job_id], queue=queue_for(model), priority=0)

    def send_plan(self, job_id: str, model: str) -> None:
        # On a worker of the job's model rather than in the API: a lost planner's task is delivered again.
        self.app.send_task(PLAN_TASK, args=[job_id], queue=queue_for(model), priority=0)

    def revoke(self, task_ids: list[str]) -> None:
        if task_ids:
            self.app.control.revoke(task_ids)
