"""Batches and jobs no worker ever planned (no worker serves their model): a cancel ends them at once, the reaper
expires them on their completion window, a plan arriving afterwards starts nothing, and each sends its event once.
A job whose input cannot be read fails at submit and sends its `failed` event too."""
from __future__ import annotations

import json
import time

import fakeredis

from tests.helpers.dispatch import Recorder
from tests.helpers.pipeline import LOCAL
from tests.helpers.rows import read_parts, write_jsonl
from tide.jobs.leases.book import LeaseBook
from tide.jobs.leases.reaper import Reaper
from tide.jobs.lifecycle import Finalizer, cancel_job, create_job, finalize_job, plan_created, submit_job
from tide.jobs.specs import JobSpec
from tide.jobs.state import JobStatus
from tide.jobs.store import RedisJobStore
from tide.jobs.webhooks.outbox import RedisOutbox

HOOK = "https://hooks.example.org/batches"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def world(tmp_path, window: str = "24h"):
    clock, store, dispatcher = Clock(), RedisJobStore(fakeredis.FakeRedis()), Recorder()
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "prompt": "hi"} for i in range(3)])
    spec = JobSpec(input=str(path), output=str(tmp_path / "out"), model="nobody-serves-this", completion_window=window)
    job = create_job(spec, store, "batch_u", LOCAL, clock, owner="owner-a", event_urls=[HOOK])
    finalizer = Finalizer(store=store, storage=LOCAL, price_per_worker_hour=0.0, clock=clock)
    return clock, store, dispatcher, job, finalizer


def events(store) -> list[str]:
    return [json.loads(d.body)["type"] for d in RedisOutbox(store.redis).deliveries("batch_u")]


def test_a_cancel_before_planning_ends_the_batch_at_once_and_a_late_plan_starts_nothing(tmp_path):
    clock, store, dispatcher, job, finalizer = world(tmp_path)
    cancelled = cancel_job(store, dispatcher, job.id, clock, finalizer=finalizer)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.cancelling_at and cancelled.cancelled_at
    assert (tmp_path / "out" / job.id / "summary.json").exists()
    planned = plan_created(job.id, store, dispatcher, LOCAL, clock)  # a worker comes up and takes the plan task
    assert planned.status == JobStatus.CANCELLED and dispatcher.shards == []
    assert events(store) == ["batch.cancelled"]


def test_a_cancel_with_no_finalizer_here_leaves_it_to_a_worker_of_the_model(tmp_path):
    clock, store, dispatcher, job, finalizer = world(tmp_path)
    assert cancel_job(store, dispatcher, job.id, clock).status == JobStatus.CANCELLING
    assert dispatcher.finalized == [job.id]
    assert finalize_job(job.id, finalizer).status == JobStatus.CANCELLED
    assert finalize_job(job.id, finalizer).status == JobStatus.CANCELLED  # delivered twice: one event
    assert events(store) == ["batch.cancelled"]


def test_the_reaper_expires_an_unplanned_batch_on_its_window(tmp_path):
    clock, store, dispatcher, job, finalizer = world(tmp_path, window="30s")
    reaper = Reaper(store, dispatcher, LeaseBook(store.redis, 10.0), finalizer, clock)
    reaper.sweep()
    assert store.get_job(job.id).status == JobStatus.VALIDATING  # not yet
    clock.now += 31
    reaper.sweep()
    reaper.sweep()
    expired = store.get_job(job.id)
    assert expired.status == JobStatus.EXPIRED and expired.expired_at == clock.now
    assert plan_created(job.id, store, dispatcher, LOCAL, clock).status == JobStatus.EXPIRED
    assert dispatcher.shards == [] and events(store) == ["batch.expired"]
    # Its requests are listed as a planned job's unfinished ones are: each one `batch_expired` error row, once.
    counts = expired.request_counts
    assert (counts.total, counts.completed, counts.failed) == (3, 0, 3)
    errors = read_parts(tmp_path / "out" / job.id, "errors-")
    assert [(e["custom_id"], e["code"]) for e in errors] == [(f"r{i}", "batch_expired") for i in range(3)]


def test_an_unplanned_job_whose_input_is_gone_still_expires_on_time(tmp_path):
    clock, store, dispatcher, job, finalizer = world(tmp_path, window="30s")
    (tmp_path / "in.jsonl").unlink()
    clock.now += 31
    Reaper(store, dispatcher, LeaseBook(store.redis, 10.0), finalizer, clock).sweep()
    expired = store.get_job(job.id)
    assert expired.status == JobStatus.EXPIRED and expired.request_counts.total == 0
    assert events(store) == ["batch.expired"]


def test_a_job_whose_input_cannot_be_read_fails_at_submit_and_sends_its_event(tmp_path):
    store, dispatcher = RedisJobStore(fakeredis.FakeRedis()), Recorder()
    spec = JobSpec(input=str(tmp_path / "missing.jsonl"), output=str(tmp_path / "out"), webhook_url=HOOK)
    job = submit_job(spec, store, dispatcher, LOCAL)
    assert job.status == JobStatus.FAILED and "missing.jsonl" in job.error
    [delivery] = RedisOutbox(store.redis).deliveries(job.id)
    assert delivery.url == HOOK and json.loads(delivery.body)["data"]["status"] == "failed"
