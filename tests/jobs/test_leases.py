"""Shard leases, the reaper and fencing on the shared job code (Redis played by fakeredis, the engine by a stand-in;
the same faults with real processes are in tests/integration/test_faults.py)."""
from __future__ import annotations

import threading
import time

import fakeredis
import pyarrow.parquet as pq
import pytest

from tests.helpers.dispatch import Recorder
from tests.helpers.pipeline import LOCAL
from tests.helpers.rows import write_jsonl
from tide.jobs.leases.book import LeaseBook
from tide.jobs.leases.reaper import Reaper
from tide.jobs.lifecycle import Finalizer, job_status, submit_job
from tide.jobs.shards.context import ShardContext
from tide.jobs.shards.runner import run_shard
from tide.jobs.specs import JobSpec
from tide.workers.engine_service import BeforeSubmit
from tide.jobs.state import JobStatus, ShardStatus
from tide.jobs.store import RedisJobStore

TTL = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path, service):
    clock, dispatcher = Clock(), Recorder()
    store = RedisJobStore(fakeredis.FakeRedis())
    book = LeaseBook(store.redis, TTL)
    rows = [{"id": f"r{i}", "prompt": f"word{i} other{i}"} for i in range(6)]
    spec = JobSpec(input=str(write_jsonl(tmp_path / "in.jsonl", rows)), output=str(tmp_path / "out"), shard_rows=3)
    job = submit_job(spec, store, dispatcher, LOCAL, clock)
    finalizer = Finalizer(store=store, storage=LOCAL, price_per_worker_hour=0.0, clock=clock)

    def context(before=None) -> ShardContext:
        return ShardContext(store=store, dispatcher=dispatcher, storage=LOCAL, worker="w", poll_s=0.02, clock=clock,
                            leases=book, service=service if before is None else BeforeSubmit(service, before))

    return clock, dispatcher, store, book, job, finalizer, context, tmp_path / "out" / job.id


def ids(prefix, kind="part-"):
    return sorted(r["custom_id"] for f in sorted(prefix.glob(f"{kind}*.parquet")) for r in pq.read_table(f).to_pylist())


def hung_attempt(task, context):
    """An attempt that stops in the middle of its shard (a dead or frozen worker); release() lets it go on."""
    gate, reached = threading.Event(), threading.Event()

    def wait(prompt):
        reached.set()
        gate.wait()

    ctx = context(before=wait)
    answer = []
    # daemon: a test may leave the attempt frozen for good, and a frozen non-daemon thread keeps pytest from exiting
    thread = threading.Thread(target=lambda: answer.append(run_shard(task, ctx)), daemon=True)
    thread.start()
    assert reached.wait(5)

    def release():
        gate.set()
        thread.join(5)
        return answer[0]

    return release


def test_a_second_delivery_of_a_running_shard_is_refused(world):
    clock, dispatcher, store, book, job, finalizer, context, prefix = world
    task = dispatcher.shards[0]
    release = hung_attempt(task, context)
    assert run_shard(task, context()) is None  # the first attempt's lease is live: one shard runs once at a time
    assert release() == ShardStatus.DONE
    assert ids(prefix) == ["r0", "r1", "r2"]
    assert store.get_shards(job.id)[0].runs == 1


def test_a_lapsed_lease_is_sent_again_and_the_late_attempt_is_fenced(world):
    clock, dispatcher, store, book, job, finalizer, context, prefix = world
    task = dispatcher.shards[0]
    release = hung_attempt(task, context)
    reaper = Reaper(store, dispatcher, book, finalizer, clock=clock)
    assert reaper.sweep() == []  # lease still live
    clock.now += TTL + 1
    assert [(lease.index, lease.token) for lease in reaper.sweep()] == [(0, 1)]
    assert reaper.sweep() == []  # taken back once
    assert dispatcher.shards[-1] == task
    assert run_shard(task, context()) == ShardStatus.DONE
    assert release() is None  # the late attempt commits nothing over the newer one
    assert ids(prefix) == ["r0", "r1", "r2"]
    shard = store.get_shards(job.id)[0]
    assert (shard.attempt, shard.runs, shard.lost, shard.progress.completed) == (2, 2, 1, 3)


def test_a_row_that_kills_its_worker_twice_is_set_aside(world):
    clock, dispatcher, store, book, job, finalizer, context, prefix = world
    task = dispatcher.shards[1]
    reaper = Reaper(store, dispatcher, book, finalizer, clock=clock)
    hung_attempt(task, context)  # crash 1: the whole shard was in the engine
    clock.now += TTL + 1
    assert len(reaper.sweep()) == 1
    gate = threading.Event()
    ctx = context(before=lambda prompt: gate.wait() if prompt == "word4 other4" else None)  # row r4
    thread = threading.Thread(target=run_shard, args=(task, ctx), daemon=True)  # careful re-run: one row at a time
    thread.start()
    deadline = time.monotonic() + 5
    while book.inflight(next(iter(_leases(book)))) != 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    clock.now += TTL + 1  # crash 2, with r4 alone in the engine
    assert len(reaper.sweep()) == 1
    assert store.get_shards(job.id)[1].poisoned_rows == [4]
    assert run_shard(task, context()) == ShardStatus.DONE
    assert ids(prefix) == ["r3", "r5"]
    errors = [r for f in prefix.glob("errors-*.parquet") for r in pq.read_table(f).to_pylist()]
    assert [(e["custom_id"], e["code"]) for e in errors] == [("r4", "worker_crashed")]
    gate.set()


def _leases(book):
    from tide.jobs import keys
    from tide.jobs.leases.book import Lease

    return [Lease.parse(m) for m in book.redis.zrange(keys.LEASES, 0, -1)]


def test_the_reaper_expires_a_job_no_worker_touches(world):
    clock, dispatcher, store, book, job, finalizer, context, prefix = world
    assert run_shard(dispatcher.shards[0], context()) == ShardStatus.DONE
    clock.now = job.expires_at + 1
    Reaper(store, dispatcher, book, finalizer, clock=clock).sweep()
    final = job_status(store, job.id)
    assert final.status == JobStatus.EXPIRED
    assert (final.request_counts.completed, final.request_counts.failed) == (3, 3)
    assert ids(prefix) == ["r0", "r1", "r2"]  # finished parts are kept
    errors = [r for f in prefix.glob("errors-*.parquet") for r in pq.read_table(f).to_pylist()]
    assert sorted((e["custom_id"], e["code"]) for e in errors) == [(f"r{i}", "batch_expired") for i in (3, 4, 5)]
    assert book.due_deadlines(clock.now) == []
