"""The two job stores obey one contract; Redis is played by fakeredis here (real Redis in tests/integration)."""
import threading

import fakeredis
import pytest

from tide.jobs.specs import JobSpec
from tide.jobs.state import Job, JobStatus, ShardProgress, ShardState, ShardStatus
from tide.jobs.store import JobNotFound, MemoryJobStore, RedisJobStore


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        return MemoryJobStore()
    return RedisJobStore(fakeredis.FakeRedis())


def make_job(job_id="j1") -> Job:
    return Job(id=job_id, spec=JobSpec(input="in.jsonl", output="out"), created_at=1.0, expires_at=99.0,
               output_prefix=f"out/{job_id}")


def test_job_round_trip_and_compare_and_set(store):
    store.put_job(make_job())
    job = store.update_job("j1", lambda j: j.moved_to(JobStatus.IN_PROGRESS, 2.0))
    assert job.status == JobStatus.IN_PROGRESS and job.in_progress_at == 2.0
    unchanged = store.update_job("j1", lambda j: None)
    assert store.get_job("j1") == unchanged == job
    with pytest.raises(JobNotFound):
        store.get_job("nope")


def test_idempotency_key_is_owned_by_the_first_claim(store):
    assert store.claim_idempotency("k", "j1") == "j1"
    assert store.claim_idempotency("k", "j2") == "j1"


def test_finish_shard_counts_down_once_per_shard_even_when_repeated(store):
    store.put_job(make_job())
    store.put_shards("j1", [ShardState(index=i, num_rows=5) for i in range(3)])
    done = lambda s: s.model_copy(update={"status": ShardStatus.DONE})  # noqa: E731
    assert store.finish_shard("j1", 1, done) == 2
    assert store.finish_shard("j1", 1, done) is None  # a re-run of a finished shard counts nothing
    assert store.finish_shard("j1", 0, done) == 1
    assert store.finish_shard("j1", 2, done) == 0


def test_concurrent_finishes_see_zero_exactly_once(store):
    n = 20
    store.put_job(make_job())
    store.put_shards("j1", [ShardState(index=i, num_rows=1) for i in range(n)])
    results = []
    done = lambda s: s.model_copy(update={"status": ShardStatus.DONE})  # noqa: E731
    threads = [threading.Thread(target=lambda i=i: results.append(store.finish_shard("j1", i, done)))
               for i in range(n) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished = [r for r in results if r is not None]
    assert sorted(finished) == list(range(n)) and finished.count(0) == 1


def test_live_progress_shows_for_running_shards_only(store):
    store.put_job(make_job())
    store.put_shards("j1", [ShardState(index=0, num_rows=5, status=ShardStatus.RUNNING),
                            ShardState(index=1, num_rows=5)])
    store.set_progress("j1", 0, ShardProgress(completed=3))
    store.set_progress("j1", 1, ShardProgress(completed=4))
    store.finish_shard("j1", 1, lambda s: s.model_copy(update={"status": ShardStatus.DONE,
                                                               "progress": ShardProgress(completed=5)}))
    assert [s.progress.completed for s in store.get_shards("j1")] == [3, 5]
    assert store.incr_attempts("j1", 0) == 1 and store.incr_attempts("j1", 0) == 2
