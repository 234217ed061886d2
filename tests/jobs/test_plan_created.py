"""A job created by the API is planned by whoever receives its plan task, once, however often it is delivered."""
from __future__ import annotations

import json

from tests.helpers.dispatch import Recorder as LeaseRecorder
from tests.helpers.pipeline import LOCAL
from tide.jobs.lifecycle import create_job, plan_created
from tide.jobs.specs import JobSpec
from tide.jobs.state import JobStatus
from tide.jobs.store import MemoryJobStore


class Recorder(LeaseRecorder):
    def send_plan(self, job_id: str, model: str) -> None:
        raise AssertionError("planning does not plan again")


def test_a_created_job_is_planned_once_across_deliveries(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "prompt": "hi"}) + "\n" for i in range(5)))
    store, dispatcher = MemoryJobStore(), Recorder()
    spec = JobSpec(input=str(source), output=str(tmp_path / "out"), shard_rows=2)
    job = create_job(spec, store, "batch_x", LOCAL)
    assert job.status == JobStatus.VALIDATING
    planned = plan_created("batch_x", store, dispatcher, LOCAL)
    again = plan_created("batch_x", store, dispatcher, LOCAL)  # a redelivered plan task
    assert planned.status == again.status == JobStatus.IN_PROGRESS
    assert [t.shard.index for t in dispatcher.shards] == [0, 1, 2] and planned.request_counts.total == 5
