"""OpenAI's validation semantics for a batch file: a line that is not JSON, names another endpoint or model, asks for
what Tide cannot honour, or a file past the request limit fails the whole batch before anything runs (`errors`
naming the lines, and the `batch.failed` event); bad request values only fail their request. Jobs that are not
OpenAI batches keep bad lines as error rows."""
from __future__ import annotations

import json

import fakeredis

from tests.helpers.dispatch import Recorder
from tests.helpers.pipeline import LOCAL
from tests.helpers.rows import write_jsonl
from tide.jobs.lifecycle import create_job, start_job
from tide.jobs.planner import plan_job
from tide.jobs.readers import MAX_LINE_BYTES, iter_jsonl_lines
from tide.jobs.specs import JobSpec
from tide.jobs.state import JobStatus
from tide.jobs.storage import resolve
from tide.jobs.store import RedisJobStore
from tide.jobs.webhooks.outbox import RedisOutbox

CHAT = "/v1/chat/completions"
HOOK = "https://hooks.example.org/openai"


def chat(i: int, **body) -> dict:
    return {"custom_id": f"r{i}", "method": "POST", "url": CHAT,
            "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], **body}}


def start(tmp_path, rows: list, **spec):
    store, dispatcher = RedisJobStore(fakeredis.FakeRedis()), Recorder()
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    job = create_job(JobSpec(input=str(path), output=str(tmp_path / "out"), model="m", **spec), store, "batch_1",
                     LOCAL, owner="owner-a", event_urls=[HOOK])
    return start_job(job, store, dispatcher, LOCAL), store, dispatcher


def test_a_file_with_invalid_lines_fails_the_batch_naming_each_line(tmp_path):
    rows = [chat(0), "{not json", chat(2, tools=[{"type": "function"}]), chat(3, model="other"),
            {**chat(4), "url": "/v1/completions"}, chat(0)]
    job, store, dispatcher = start(tmp_path, rows, endpoint=CHAT)
    assert job.status == JobStatus.FAILED and job.failed_at is not None and dispatcher.shards == []
    assert [(e.line, e.code, e.param) for e in job.sample_errors] == [
        (2, "invalid_json", None), (3, "unsupported_field", "body.tools"), (4, "mismatched_model", "body.model"),
        (5, "mismatched_url", "url"), (6, "duplicate_custom_id", "custom_id")]
    assert job.request_counts.total == 0
    [event] = RedisOutbox(store.redis).deliveries("batch_1")  # the key's endpoint hears it failed, in OpenAI's shape
    body = json.loads(event.body)
    assert event.url == HOOK and event.signer == "owner-a" and body["type"] == "batch.failed"
    assert body["object"] == "event" and body["data"] == {"id": "batch_1"} and body["id"].startswith("evt_")


def test_bad_request_values_fail_their_request_and_the_batch_runs(tmp_path):
    no_messages = chat(3)
    del no_messages["body"]["messages"]
    rows = [chat(0), chat(1, temperature=-1), chat(2, frobnicate=True), no_messages]
    job, _, dispatcher = start(tmp_path, rows, endpoint=CHAT)
    assert job.status == JobStatus.IN_PROGRESS and len(dispatcher.shards) == 1
    assert job.request_counts.total == 4
    assert {e.code for e in job.sample_errors} == {"invalid_field", "unknown_field", "missing_prompt"}


def test_a_file_past_the_request_limit_fails_at_validation(tmp_path):
    job, _, dispatcher = start(tmp_path, [chat(i) for i in range(6)], endpoint=CHAT, max_requests=5)
    assert job.status == JobStatus.FAILED and dispatcher.shards == []
    assert [(e.line, e.code) for e in job.sample_errors] == [(None, "too_many_requests")]
    assert "more than 5 requests" in job.sample_errors[0].message


def test_a_job_that_is_not_an_openai_batch_keeps_bad_lines_as_error_rows(tmp_path):
    job, _, dispatcher = start(tmp_path, [{"prompt": "a"}, "{not json", {"prompt": "b", "tools": []}])
    assert job.status == JobStatus.IN_PROGRESS and job.request_counts.total == 3
    assert [e.code for e in job.sample_errors] == ["invalid_json", "unknown_field"]


def test_a_line_past_the_cap_is_read_past_as_an_error_row(tmp_path):
    path = tmp_path / "in.jsonl"
    huge = json.dumps({"id": "big", "prompt": "x" * (MAX_LINE_BYTES + 10)})
    path.write_text(json.dumps({"id": "a", "prompt": "p"}) + "\n" + huge + "\n" + json.dumps({"id": "b", "prompt": "q"})
                    + "\n")
    plan = plan_job(JobSpec(input=str(path), output=str(tmp_path / "out"), shard_rows=2), LOCAL)
    assert plan.total_rows == 3 and [(e.line, e.code) for e in plan.first_errors] == [(2, "line_too_long")]
    lines = list(iter_jsonl_lines(resolve(str(path), LOCAL), max_line_bytes=64))
    assert [(line.row, line.too_long, line.data is None) for line in lines] == [(0, False, False), (1, True, True),
                                                                                (2, False, False)]
    assert lines[2].start == lines[1].end and lines[1].end - lines[1].start == len(huge) + 1
