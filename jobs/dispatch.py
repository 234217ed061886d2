"""How work is handed out: Celery queues for real jobs, a thread pool for `tide run`. Both obey this interface."""
from __future__ import annotations

from typing import Protocol

from tide.jobs.specs import ShardTask


class Dispatcher(Protocol):
    def send_shard(self, task: ShardTask) -> None: ...
    def send_finalize(self, job_id: str, model: str) -> None: ...
    def send_plan(self, job_id: str, model: str) -> None: ...  # validate and shard a created job (`plan_created`)
    def revoke(self, task_ids: list[str]) -> None: ...


class ShardRetry(Exception):
    """A shard attempt failed for a reason that may pass (storage hiccup, engine failure); run it again."""


def shard_task_id(job_id: str, index: int) -> str:
    """Deterministic task ids: a job's shards can be revoked without storing what the broker assigned."""
    return f"{job_id}.shard-{index:05d}"
