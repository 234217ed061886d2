"""A dispatcher that only records what it was asked to send (unit tests of the job lifecycle)."""
from __future__ import annotations


class Recorder:
    """A dispatcher that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.shards, self.finalized = [], []

    def send_shard(self, task) -> None:
        self.shards.append(task)

    def send_finalize(self, job_id: str, model: str) -> None:
        self.finalized.append(job_id)

    def revoke(self, task_ids) -> None:
        pass
