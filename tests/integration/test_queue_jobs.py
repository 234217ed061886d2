"""Jobs through real Redis, a real S3 endpoint (moto server) and a real `tide worker` process with the real engine."""
from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers.services import BUCKET, SERVED, WEBHOOK_SECRET, put_jsonl, read_s3_json, read_s3_parts, submit, tide
from tide.engine import LLM, SamplingParams
from tide.jobs.lifecycle import job_status, submit_job
from tide.jobs.specs import JobSpec
from tide.jobs.storage import StorageConfig, s3_client
from tide.jobs.store import RedisJobStore
from tide.jobs.webhooks.courier import Courier, WebhookConfig
from tide.jobs.webhooks.outbox import RedisOutbox
from tide.jobs.webhooks.signing import signer
from tide.workers.celery_app import make_app
from tide.workers.dispatch import CeleryDispatcher

MAX_TOKENS = 8
CHATS = [[{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"Name a {thing}."}]
         for thing in ("colour", "river", "planet", "number", "bird", "tree")]
TEXTS = ["Once upon a time", "The quick brown fox", "In 1905, Einstein", "def fibonacci(n):", "Paris is", "Hi"]


@pytest.fixture(scope="module")
def reference(services):
    """The same prompts run through the engine directly (greedy, fp32, same limits as the jobs)."""
    llm = LLM(model=str(services.model_dir), dtype="float32", max_num_seqs=32)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    outputs = llm.generate(CHATS + TEXTS, params)
    return {"chat": [o.text for o in outputs[:len(CHATS)]], "text": [o.text for o in outputs[len(CHATS):]]}


@pytest.fixture
def webhook_receiver():
    received: list[tuple[dict, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append((dict(self.headers), self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/done", received
    server.shutdown()


def sampling_args() -> list[str]:
    return ["--model", SERVED, "--max-tokens", str(MAX_TOKENS), "--temperature", "0"]


def test_jsonl_job_from_s3_matches_the_engine_and_reports_bad_rows(services, worker, reference, webhook_receiver):
    url, received = webhook_receiver
    rows = [{"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": m, "max_tokens": MAX_TOKENS}} for i, m in enumerate(CHATS)]
    rows += [{"id": f"text-{i}", "prompt": p} for i, p in enumerate(TEXTS)]
    bad = ["{not json", {"id": "text-0", "prompt": "duplicate"}, {"id": "nothing"},
           {"id": "huge", "prompt": "word " * 600}]  # longer than the tiny model's 512-token context
    uri = put_jsonl(BUCKET, "inputs/mixed.jsonl", rows[:7] + bad + rows[7:])
    job_id = submit(services.env, uri, "--output", f"s3://{BUCKET}/results", "--shard-rows", "4",
                    "--webhook", url, *sampling_args())
    waited = tide(services.env, "wait", job_id, "--timeout", "180")
    assert waited.returncode == 0, waited.stdout + waited.stderr

    results = read_s3_parts(BUCKET, f"results/{job_id}", "part-")
    by_id = {r["custom_id"]: r["text"] for r in results}
    assert len(results) == len(by_id) == 12  # every id exactly once
    assert [by_id[f"chat-{i}"] for i in range(6)] == reference["chat"]
    assert [by_id[f"text-{i}"] for i in range(6)] == reference["text"]
    errors = {(e["line"], e["custom_id"], e["code"]) for e in read_s3_parts(BUCKET, f"results/{job_id}", "errors-")}
    assert errors == {(8, None, "invalid_json"), (9, "text-0", "duplicate_custom_id"),
                      (10, "nothing", "missing_prompt"), (11, "huge", "context_length_exceeded")}

    summary = read_s3_json(BUCKET, f"results/{job_id}/summary.json")
    assert summary["status"] == "completed"
    assert summary["request_counts"] == {"total": 16, "completed": 12, "failed": 4}
    assert summary["output_tokens_per_s"] > 0 and summary["latency_s"]["ttft"]["p99"] is not None
    assert [w["mean_batch_occupancy"] > 0 for w in summary["workers"].values()] == [True]

    # The worker queued the event in Redis; a courier (what `tide beat` runs) signs and delivers it.
    outbox = RedisOutbox(RedisJobStore.from_url(services.redis_url).redis)
    Courier(outbox, WebhookConfig(secrets=[WEBHOOK_SECRET], allow_private=True)).pump()
    headers, body = received[0]
    payload = signer(WEBHOOK_SECRET).verify(body, headers)
    assert payload["type"] == "batch.completed" and payload["data"]["id"] == job_id
    assert [e.outcome for e in outbox.log(job_id)] == ["delivered"]

    listed = tide(services.env, "results", job_id, "--limit", "3")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 3


def test_parquet_job_from_s3_with_mapped_columns(services, worker, reference):
    table = pa.table({"question": TEXTS, "qid": [f"q{i}" for i in range(len(TEXTS))]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=2)
    s3_client().put_object(Bucket=BUCKET, Key="inputs/texts.parquet", Body=sink.getvalue())
    job_id = submit(services.env, f"s3://{BUCKET}/inputs/texts.parquet", "--output", f"s3://{BUCKET}/results",
                    "--prompt-column", "question", "--id-column", "qid", "--shard-rows", "3", *sampling_args())
    waited = tide(services.env, "wait", job_id, "--timeout", "180")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    results = read_s3_parts(BUCKET, f"results/{job_id}", "part-")
    assert [r["custom_id"] for r in results] == [f"q{i}" for i in range(6)]
    assert [r["text"] for r in results] == reference["text"]


def test_two_jobs_at_once_share_one_worker(services, worker):
    store = RedisJobStore.from_url(services.redis_url)
    dispatcher = CeleryDispatcher(make_app(services.redis_url))
    specs = [JobSpec(input=put_jsonl(BUCKET, f"inputs/{name}.jsonl",
                                     [{"id": f"{name}{i}", "prompt": f"Story {name} number {i}:"} for i in range(16)]),
                     output=f"s3://{BUCKET}/results", model=SERVED,
                     sampling={"max_tokens": 96, "ignore_eos": True, "temperature": 0})
             for name in ("a", "b")]
    ids = [submit_job(spec, store, dispatcher, StorageConfig()).id for spec in specs]  # back to back, in this process
    for job_id in ids:
        assert tide(services.env, "wait", job_id, "--timeout", "180").returncode == 0
    (a,), (b,) = (store.get_shards(job_id) for job_id in ids)
    assert a.worker == b.worker
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # both shards were in the engine at once
    assert all(job_status(store, j).request_counts.completed == 16 for j in ids)


def test_cancel_mid_job_keeps_finished_parts(services, worker):
    store = RedisJobStore.from_url(services.redis_url)
    uri = put_jsonl(BUCKET, "inputs/long.jsonl", [{"id": f"c{i}", "prompt": f"Chapter {i}."} for i in range(400)])
    job_id = submit(services.env, uri, "--output", f"s3://{BUCKET}/results", "--model", SERVED, "--max-tokens", "64",
                    "--sampling", '{"ignore_eos": true}', "--shard-rows", "8")
    deadline = time.monotonic() + 120
    while sum(s.status.value == "done" for s in store.get_shards(job_id)) < 2:
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.2)
    cancelled = tide(services.env, "cancel", job_id)
    assert cancelled.returncode == 0 and "cancelling" in cancelled.stdout
    assert tide(services.env, "wait", job_id, "--timeout", "120").returncode == 1  # not completed
    job = job_status(store, job_id)
    assert job.status.value == "cancelled"
    results = read_s3_parts(BUCKET, f"results/{job_id}", "part-")
    done = [s for s in store.get_shards(job_id) if s.status.value == "done"]
    assert 2 <= len(done) < 50
    ids = [r["custom_id"] for r in results]
    assert len(ids) == len(set(ids)) == job.request_counts.completed >= 16
    assert read_s3_json(BUCKET, f"results/{job_id}/summary.json")["status"] == "cancelled"
