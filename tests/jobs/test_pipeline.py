"""Whole jobs through the shared job code (planner, shard runner, finalizer) on the in-process dispatcher."""
import json
import time

import pytest

from tests.helpers.fake_engine import FakeEngine, expected_text
from tests.helpers.pipeline import LOCAL, run_local
from tests.helpers.rows import read_parts, write_jsonl
from tide.jobs.embedded import LocalDispatcher
from tide.jobs.lifecycle import Finalizer, cancel_job, finalize_job, job_status, submit_job
from tide.jobs.progress import wait_for_job
from tide.jobs.shards.context import ShardContext
from tide.jobs.specs import JobSpec
from tide.jobs.state import JobStatus
from tide.jobs.store import MemoryJobStore
from tide.workers.engine_service import EngineService


def pipeline(service, **ctx):
    store = MemoryJobStore()
    dispatcher = LocalDispatcher(2)
    dispatcher.shard_context = ShardContext(store=store, dispatcher=dispatcher, service=service, storage=LOCAL,
                                            worker="w1", poll_s=0.05, **ctx)
    dispatcher.finalizer = Finalizer(store=store, storage=LOCAL, price_per_worker_hour=0.0)
    return store, dispatcher


def good_rows(n):
    return [{"id": f"r{i}", "prompt": " ".join(f"w{i}-{k}" for k in range(i % 5 + 1))} for i in range(n)]


def test_job_writes_every_id_exactly_once_with_engine_outputs_and_error_rows(tmp_path, service):
    rows = good_rows(23)
    bad = ["{oops", {"id": "r3", "prompt": "duplicate id"}, {"id": "long", "prompt": "x " * 100}, {"id": "np"}]
    path = write_jsonl(tmp_path / "in.jsonl", rows[:10] + bad + rows[10:])
    spec = JobSpec(input=str(path), output=str(tmp_path / "out"), shard_rows=5, sampling={"max_tokens": 3})
    job = run_local(spec, service, shards_in_flight=2)
    assert job.status == JobStatus.COMPLETED
    assert job.request_counts.model_dump() == {"total": 27, "completed": 23, "failed": 4}
    prefix = tmp_path / "out" / job.id
    results = read_parts(prefix)
    assert [r["custom_id"] for r in results] == [r["id"] for r in rows]  # once each, in input order
    assert all(r["text"] == expected_text(src["prompt"], 3) for r, src in zip(results, rows))
    errors = {e["custom_id"]: (e["line"], e["code"]) for e in read_parts(prefix, "errors-")}
    assert errors == {None: (11, "invalid_json"), "r3": (12, "duplicate_custom_id"),
                      "long": (13, "context_length_exceeded"), "np": (14, "missing_prompt")}
    summary = json.loads((prefix / "summary.json").read_text())
    assert summary["request_counts"]["completed"] == 23 and summary["num_shards"] == 6
    assert summary["usage"]["completion_tokens"] == sum(min(3, i % 5 + 1) for i in range(23))
    assert summary["latency_s"]["ttft"]["p50"] is not None and "embedded" in summary["workers"]


def test_prompts_sharing_a_prefix_reach_the_engine_together(tmp_path, service, fake_engine):
    preambles = ["alpha beta gamma", "delta epsilon zeta"]
    rows = [{"id": f"q{i}", "prompt": f"{preambles[i % 2]} question {i}"} for i in range(8)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    run_local(JobSpec(input=str(path), output=str(tmp_path / "out")), service)
    order = [int(rid.rsplit(":", 1)[1]) for rid in fake_engine.added]
    assert order == [0, 2, 4, 6, 1, 3, 5, 7]


def test_same_idempotency_key_returns_the_same_job(tmp_path, service):
    store, dispatcher = pipeline(service)
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(3))
    spec = JobSpec(input=str(path), output=str(tmp_path / "out"), idempotency_key="nightly-1")
    first = submit_job(spec, store, dispatcher, LOCAL)
    again = submit_job(spec, store, dispatcher, LOCAL)
    assert again.id == first.id
    assert wait_for_job(store, first.id, poll_s=0.05, show=False).status == JobStatus.COMPLETED
    dispatcher.close()


def test_unreadable_input_fails_the_job_with_the_reason(tmp_path, service):
    store, dispatcher = pipeline(service)
    job = submit_job(JobSpec(input=str(tmp_path / "missing.jsonl"), output=str(tmp_path)), store, dispatcher, LOCAL)
    assert job.status == JobStatus.FAILED and "missing.jsonl" in job.error
    dispatcher.close()


def test_cancel_mid_job_keeps_finished_parts(tmp_path):
    engine = FakeEngine(max_num_seqs=1, step_delay_s=0.02)
    service = EngineService(engine, idle_wait_s=0.01)
    store, dispatcher = pipeline(service)
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(60))
    job = submit_job(JobSpec(input=str(path), output=str(tmp_path / "out"), shard_rows=5), store, dispatcher, LOCAL)
    while job_status(store, job.id).request_counts.completed < 10:
        time.sleep(0.01)
    cancel_job(store, dispatcher, job.id)
    job = wait_for_job(store, job.id, poll_s=0.05, show=False, timeout_s=10)
    assert job.status == JobStatus.CANCELLED and job.cancelling_at and job.cancelled_at
    results = read_parts(tmp_path / "out" / job.id)
    assert 10 <= len(results) < 60
    assert len({r["custom_id"] for r in results}) == len(results) == job.request_counts.completed
    dispatcher.close()
    service.close()


def test_job_past_its_completion_window_expires(tmp_path):
    engine = FakeEngine(max_num_seqs=1, step_delay_s=0.02)
    service = EngineService(engine, idle_wait_s=0.01)
    store, dispatcher = pipeline(service)
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(40))
    spec = JobSpec(input=str(path), output=str(tmp_path / "out"), shard_rows=5, completion_window="0.3s")
    job = wait_for_job(store, submit_job(spec, store, dispatcher, LOCAL).id, poll_s=0.05, show=False, timeout_s=10)
    assert job.status == JobStatus.EXPIRED and job.request_counts.completed < 40
    dispatcher.close()
    service.close()


class FlakyService:
    """Fails the first `failures` submits, as an engine that crashed would."""

    def __init__(self, inner, failures):
        self.inner, self.failures = inner, failures

    def submit(self, *args):
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("engine crashed")
        self.inner.submit(*args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("failures, completed, failed", [(2, 4, 0), (10, 0, 4)])
def test_failed_attempts_retry_up_to_the_cap_then_fail_the_rows(tmp_path, service, failures, completed, failed):
    store, dispatcher = pipeline(FlakyService(service, failures), max_attempts=3)
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(4))
    job = submit_job(JobSpec(input=str(path), output=str(tmp_path / "out")), store, dispatcher, LOCAL)
    job = wait_for_job(store, job.id, poll_s=0.05, show=False, timeout_s=10)
    assert job.status == JobStatus.COMPLETED
    assert (job.request_counts.completed, job.request_counts.failed) == (completed, failed)
    shard = store.get_shards(job.id)[0]
    assert (shard.error is None) == (failed == 0)
    dispatcher.close()


def test_finalize_twice_changes_nothing(tmp_path, service):
    store, dispatcher = pipeline(service)
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(2))
    job = wait_for_job(store, submit_job(JobSpec(input=str(path), output=str(tmp_path / "o")), store,
                                         dispatcher, LOCAL).id, poll_s=0.05, show=False)
    again = finalize_job(job.id, Finalizer(store=store, storage=LOCAL, price_per_worker_hour=0.0))
    assert again.completed_at == store.get_job(job.id).completed_at
    dispatcher.close()
