"""SIGTERM on a worker mid-job: in-flight shards finish, the rest wait on the queue, and a new worker completes the
job with every row exactly once."""
from __future__ import annotations

import time

from tests.helpers.services import BUCKET, put_jsonl, read_s3_parts, submit, tide
from tide.jobs.lifecycle import job_status
from tide.jobs.state import ShardStatus
from tide.jobs.store import RedisJobStore
from tide.workers.processes import start_worker, stop

SERVED = "tiny-llama-shutdown"  # its own queue, so the session's worker does not take these shards


def test_sigterm_finishes_in_flight_shards_and_loses_nothing(services):
    store = RedisJobStore.from_url(services.redis_url)
    first = start_worker(services.model_dir, SERVED, services.env, services.logs / "shutdown-1.log")
    uri = put_jsonl(BUCKET, "inputs/shutdown.jsonl", [{"id": f"s{i}", "prompt": f"Item {i}:"} for i in range(96)])
    job_id = submit(services.env, uri, "--output", f"s3://{BUCKET}/results", "--model", SERVED,
                    "--max-tokens", "64", "--sampling", '{"ignore_eos": true, "temperature": 0}',
                    "--shard-rows", "8")
    deadline = time.monotonic() + 120
    while not any(s.status == ShardStatus.DONE for s in store.get_shards(job_id)):
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.1)
    assert stop(first, timeout_s=120) == 0
    shards = store.get_shards(job_id)
    assert not any(s.status == ShardStatus.RUNNING for s in shards)  # in-flight shards were finished, not dropped
    assert any(s.status == ShardStatus.PENDING for s in shards)

    second = start_worker(services.model_dir, SERVED, services.env, services.logs / "shutdown-2.log")
    try:
        assert tide(services.env, "wait", job_id, "--timeout", "180").returncode == 0
    finally:
        stop(second)
    ids = [r["custom_id"] for r in read_s3_parts(BUCKET, f"results/{job_id}", "part-")]
    assert sorted(ids) == sorted(f"s{i}" for i in range(96))
    assert job_status(store, job_id).request_counts.completed == 96
