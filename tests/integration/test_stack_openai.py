"""The service path as a newcomer takes it: `tide stack up --s3` (real redis-server, S3 endpoint, API and worker
processes), then the official `openai` client, unchanged, through the whole Batch flow: chat, completions with
logprobs and responses batches whose every output line validates against the client's own types, an OpenAI model
name mapped by an alias, an unserved one refused at once (or, through a second API opted in to
TIDE_ACCEPT_UNSERVED, expired on its window and cancelled at once), an invalid file failed at validation, and the
key's batch webhooks in OpenAI's shape; `tide stack down` leaves nothing."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from standardwebhooks import Webhook

from tests.helpers.openai_types import strictly
from tests.helpers.receiver import SECRET, Receiver
from tests.helpers.services import tide
from tests.helpers.stack import running_stack
from tide.workers.processes import free_port, start_api, stop

SERVED = "tiny-llama"
OPENAI_NAME = "gpt-4o-mini"  # what the unchanged pipeline's lines say; an alias maps it to SERVED
KEY, OTHER_KEY = "tide-dev-key", "another-teams-key"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def hook():
    """The dev key's batch webhook endpoint (a real receiver on loopback)."""
    receiver = Receiver(free_port()).start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir, hook):
    policies = {KEY: {"webhooks": [hook.url], "webhook_secret": SECRET}}
    env = {**os.environ, "TIDE_API_KEYS": f"{KEY},{OTHER_KEY}", "TIDE_SHARD_ROWS": "8",
           "TIDE_MODEL_ALIASES": f"{OPENAI_NAME}={SERVED}", "TIDE_API_KEY_POLICIES": json.dumps(policies),
           "TIDE_WEBHOOK_ALLOW_PRIVATE": "true", "TIDE_REAPER_INTERVAL_S": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("AWS_") and k != "TIDE_ACCEPT_UNSERVED"}
    with running_stack(tmp_path_factory.mktemp("stack"), env, tiny_model_dir("llama"), SERVED, "--s3", "--s3-port",
                       str(free_port())) as running:
        yield running


@pytest.fixture(scope="module")
def waiting_client(stack, tmp_path_factory) -> openai.OpenAI:
    """The client of a second real API on the stack's Redis and storage, opted in to TIDE_ACCEPT_UNSERVED."""
    env = {**stack.env, **{k: v for k, v in stack.exports.items() if k != "TIDE_API_URL"},
           "TIDE_ACCEPT_UNSERVED": "true"}
    port = free_port()
    process = start_api(env, port, tmp_path_factory.mktemp("waiting-api") / "api.log")
    try:
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0)
    finally:
        stop(process)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.exports["TIDE_API_URL"], api_key=KEY, max_retries=0)


def _lines(n: int, max_tokens: int = 8, start: int = 0, **body) -> list[dict]:
    return [{"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": SERVED, "messages": [{"role": "user", "content": f"Question {i}: say hi"}],
                      "max_tokens": max_tokens, "temperature": 0, **body}} for i in range(start, start + n)]


def _upload(client: openai.OpenAI, tmp_path: Path, lines: list, name: str = "batch.jsonl"):
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    with open(path, "rb") as f:
        return client.files.create(file=f, purpose="batch")


def _wait(client: openai.OpenAI, batch_id: str, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.3)
    raise TimeoutError(f"batch {batch_id} still {batch.status}")


def _jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def _openai_lines(url: str, n: int, **body) -> list[dict]:
    """Lines as an OpenAI pipeline writes them, naming OpenAI's model."""
    def line(i: int) -> dict:
        if url == "/v1/chat/completions":
            payload = {"messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": f"Question {i}: say hi"}]}
        elif url == "/v1/completions":
            payload = {"prompt": f"Question {i}: say hi"}
        else:
            payload = {"input": f"Question {i}: say hi", "instructions": "Be brief.", "metadata": {"i": str(i)}}
        return {"custom_id": f"{url.rsplit('/', 1)[1]}-{i}", "method": "POST", "url": url,
                "body": {"model": OPENAI_NAME, "temperature": 0, **payload, **body}}
    return [line(i) for i in range(n)]


def _run(client: openai.OpenAI, tmp_path: Path, lines: list, endpoint: str):
    uploaded = _upload(client, tmp_path, lines, name=f"{endpoint.rsplit('/', 1)[1]}.jsonl")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")
    return batch, _wait(client, batch.id)


def test_a_chat_batch_runs_from_upload_to_output_and_error_files(client, hook, tmp_path):
    good = _openai_lines("/v1/chat/completions", 20, max_completion_tokens=8, logprobs=True, top_logprobs=2)
    bad = _openai_lines("/v1/chat/completions", 2, max_tokens=8)
    bad[0]["custom_id"], bad[0]["body"]["temperature"] = "bad-temperature", -1
    bad[1]["custom_id"], bad[1]["body"]["frobnicate"] = "bad-field", True
    created, batch = _run(client, tmp_path, good + bad, "/v1/chat/completions")
    assert created.status in ("validating", "in_progress") and created.model == SERVED

    assert batch.status == "completed" and batch.errors is None, batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (22, 20, 2)
    assert batch.completed_at >= batch.finalizing_at >= batch.in_progress_at >= batch.created_at
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens > 0

    output, errors = _jsonl(client, batch.output_file_id), _jsonl(client, batch.error_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in good)
    assert len({line["custom_id"] for line in output + errors}) == 22  # every request exactly once
    fingerprints = set()
    for line in output:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        completion = strictly(ChatCompletion, line["response"]["body"])
        assert completion.model == SERVED and completion.choices[0].message.role == "assistant"
        assert batch.in_progress_at <= completion.created <= batch.completed_at
        usage = completion.usage
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        content = completion.choices[0].logprobs.content
        assert len(content) == usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
        assert all(isinstance(t.token, str) and t.bytes is not None for t in content)
        fingerprints.add(completion.system_fingerprint)
    assert len(fingerprints) == 1 and next(iter(fingerprints)).startswith("fp_")
    assert sorted((e["custom_id"], e["response"]["status_code"], e["response"]["body"]["error"]["param"])
                  for e in errors) == [("bad-field", 400, "body.frobnicate"), ("bad-temperature", 400, "temperature")]
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    deadline = time.monotonic() + 30
    while not (mine := [e for e in _events(hook) if e["data"]["id"] == batch.id]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [e["type"] for e in mine] == ["batch.completed"] and mine[0]["object"] == "event"


def _events(hook: Receiver) -> list[dict]:
    return [Webhook(SECRET).verify(body, headers) for headers, body, _ in hook.received]


def test_a_completions_batch_with_logprobs(client, tmp_path):
    lines = _openai_lines("/v1/completions", 6, max_tokens=6, logprobs=3)
    _, batch = _run(client, tmp_path, lines, "/v1/completions")
    assert batch.status == "completed" and batch.request_counts.completed == 6, batch
    for line in _jsonl(client, batch.output_file_id):
        completion = strictly(Completion, line["response"]["body"])
        choice = completion.choices[0]
        logprobs = choice.logprobs
        assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset)
        assert len(logprobs.tokens) == completion.usage.completion_tokens
        assert all(len(top) <= 3 and top for top in logprobs.top_logprobs)
        assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[0] == 0


def test_a_responses_batch(client, tmp_path):
    lines = _openai_lines("/v1/responses", 4, max_output_tokens=6)
    _, batch = _run(client, tmp_path, lines, "/v1/responses")
    assert batch.status == "completed" and batch.request_counts.completed == 4, batch
    output = _jsonl(client, batch.output_file_id)
    for line in output:
        response = strictly(Response, line["response"]["body"])
        assert response.object == "response" and response.model == SERVED
        assert response.status in ("completed", "incomplete") and response.output[0].content[0].type == "output_text"
        assert response.instructions == "Be brief." and response.metadata == {"i": line["custom_id"].split("-")[1]}
        assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
        assert response.usage.output_tokens <= 6


def test_an_invalid_file_fails_the_batch_before_anything_runs(client, tmp_path):
    lines = _openai_lines("/v1/chat/completions", 3, max_tokens=4)
    lines[1]["body"]["tools"] = [{"type": "function", "function": {"name": "lookup"}}]
    lines[2]["body"]["model"] = "gpt-4o"
    _, batch = _run(client, tmp_path, [*lines, "{not json"], "/v1/chat/completions")
    assert batch.status == "failed" and batch.failed_at is not None and batch.output_file_id is None
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [
        (2, "unsupported_field", "body.tools"), (3, "mismatched_model", "body.model"), (4, "invalid_json", None)]
    assert batch.request_counts.completed == 0


def test_a_batch_naming_an_unserved_model_is_refused_at_create_in_under_a_second(client, tmp_path):
    lines = _openai_lines("/v1/chat/completions", 2)
    for line in lines:
        line["body"]["model"] = "gpt-4.1"
    uploaded = _upload(client, tmp_path, lines)
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert time.monotonic() - started < 1.0
    assert refused.value.code == "model_not_found" and "gpt-4.1" in refused.value.message
    assert SERVED in refused.value.message
    with pytest.raises(openai.BadRequestError, match="/v1/moderations"):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/moderations", completion_window="24h")


def test_opted_in_an_unserved_batch_waits_then_expires_on_its_window_or_cancels_at_once(waiting_client, hook,
                                                                                       tmp_path):
    lines = _openai_lines("/v1/chat/completions", 2)
    for line in lines:
        line["body"]["model"] = "gpt-4.1"
    uploaded = _upload(waiting_client, tmp_path, lines)
    expiring = waiting_client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                             completion_window="3s")  # Tide takes any duration; OpenAI only 24h
    waiting = waiting_client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                            completion_window="24h")
    assert expiring.status == waiting.status == "validating" and expiring.model == "gpt-4.1"
    started = time.monotonic()
    cancelled = waiting_client.batches.cancel(waiting.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None  # no worker would ever end it
    assert time.monotonic() - started < 1.0
    expired = _wait(waiting_client, expiring.id, timeout_s=30)
    assert expired.status == "expired" and expired.errors is None
    assert 3 <= expired.expired_at - expired.created_at <= 3 + 1 + 3  # its window, a reaper interval, a margin
    counts = expired.request_counts
    assert (counts.total, counts.completed, counts.failed) == (2, 0, 2)
    assert _jsonl(waiting_client, expired.output_file_id) == []
    errors = _jsonl(waiting_client, expired.error_file_id)  # each request listed once, as OpenAI lists them
    assert sorted((e["custom_id"], e["error"]["code"], e["response"]) for e in errors) == [
        (line["custom_id"], "batch_expired", None) for line in lines]
    deadline, ids = time.monotonic() + 30, {expiring.id, waiting.id}
    while len(mine := {e["data"]["id"]: e["type"] for e in _events(hook) if e["data"]["id"] in ids}) < 2:
        assert time.monotonic() < deadline, mine
        time.sleep(0.2)
    assert mine == {expiring.id: "batch.expired", waiting.id: "batch.cancelled"}


def test_finished_shards_are_readable_while_running_and_cancel_keeps_them(client, stack, tmp_path):
    uploaded = _upload(client, tmp_path, _lines(400, max_tokens=200, ignore_eos=True))
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    url, headers = stack.exports["TIDE_API_URL"], {"Authorization": f"Bearer {KEY}"}
    deadline = time.monotonic() + 120
    while not (partial := httpx.get(f"{url}/jobs/{batch.id}/results", headers=headers).text.splitlines()):
        assert time.monotonic() < deadline, "no shard finished"
        time.sleep(0.1)
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.request_counts.completed >= len(partial) > 0
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = _wait(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    output = _jsonl(client, batch.output_file_id)
    assert len(partial) <= len(output) < 400 and batch.request_counts.completed == len(output)
    assert {json.loads(row)["custom_id"] for row in partial} <= {line["custom_id"] for line in output}
    assert len({line["custom_id"] for line in output}) == len(output)


def test_lists_page_with_cursors(client, tmp_path):
    uploaded = _upload(client, tmp_path, _lines(2))
    ids = [client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h").id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    assert [b.id for b in first.data] == ids[::-1][:2]  # newest first
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    every = [b.id for b in client.batches.list(limit=1)]  # the client follows the cursor itself
    assert every[:3] == ids[::-1] and len(every) == len(set(every))
    files = client.files.list(limit=1, order="asc")
    assert files.has_more and len(files.data) == 1


def test_keys_are_required_and_scoped(client, stack, tmp_path):
    uploaded = _upload(client, tmp_path, _lines(1))
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    url = stack.exports["TIDE_API_URL"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).batches.retrieve(batch.id)
    answer = httpx.get(f"{url}/batches/{batch.id}")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "missing_api_key"
    other = openai.OpenAI(base_url=url, api_key=OTHER_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.id not in [b.id for b in other.batches.list()]


def test_native_job_with_idempotency_key_progress_and_results(client, stack, tmp_path):
    uploaded = _upload(client, tmp_path, [{"id": f"p{i}", "prompt": f"Count to {i}"} for i in range(12)])
    url, headers = stack.exports["TIDE_API_URL"], {"Authorization": f"Bearer {KEY}", "Idempotency-Key": "n1"}
    spec = {"input": uploaded.id, "model": SERVED, "sampling": {"max_tokens": 4, "temperature": 0}}
    first = httpx.post(f"{url}/jobs", json=spec, headers=headers).json()
    again = httpx.post(f"{url}/jobs", json=spec, headers=headers).json()
    assert first["id"] == again["id"] and first["object"] == "job"
    deadline = time.monotonic() + 120
    while (job := httpx.get(f"{url}/jobs/{first['id']}", headers=headers).json())["status"] not in TERMINAL:
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert job["status"] == "completed" and job["progress"] == {"done": 12, "total": 12, "fraction": 1.0}
    assert job["throughput"]["output_tokens_per_s"] > 0 and job["eta_s"] is None
    rows = [json.loads(line) for line in httpx.get(f"{url}/jobs/{first['id']}/results", headers=headers).text
            .splitlines()]
    assert sorted(r["custom_id"] for r in rows) == sorted(f"p{i}" for i in range(12))
    local = httpx.post(f"{url}/jobs", json={**spec, "input": "/etc/passwd"}, headers={"Authorization": f"Bearer {KEY}"})
    assert local.status_code == 400 and local.json()["error"]["param"] == "input"


def test_health_ready_and_metrics_need_no_key(client, stack):
    base = stack.exports["TIDE_API_URL"].removesuffix("/v1")
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz").json()["checks"] == {"redis": True, "storage": True}
    text = httpx.get(f"{base}/metrics").text
    assert 'tide_jobs{status="completed"}' in text
    assert f'tide_workers{{model="{SERVED}"}} 1.0' in text
    assert f'tide_rows_completed_total{{model="{SERVED}"}}' in text
    assert f'tide_ttft_seconds_count{{model="{SERVED}"}}' in text


def test_an_oversized_body_is_refused_in_the_openai_shape(stack):
    url = stack.exports["TIDE_API_URL"]
    answer = httpx.post(f"{url}/batches", content=b"{" + b" " * (2 * 2**20) + b"}",
                        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"


def test_a_50k_line_upload_keeps_api_memory_flat(client, stack, tmp_path):
    path = tmp_path / "big.jsonl"
    line = json.dumps(_lines(1)[0]) + " " * 900
    with open(path, "w") as f:
        for i in range(50_000):
            f.write(line.replace("req-0", f"req-{i}") + "\n")
    size = path.stat().st_size
    api_pid = stack.pids["api"]
    before, peak = _rss(api_pid), [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss(api_pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(path, "rb") as f:
            uploaded = client.files.create(file=f, purpose="batch")
    finally:
        done.set()
        sampler.join()
    assert uploaded.bytes == size
    growth = peak[0] - before
    print(f"50k-line upload of {size / 2**20:.1f} MiB: API RSS {before / 2**20:.1f} -> peak "
          f"{peak[0] / 2**20:.1f} MiB (+{growth / 2**20:.1f} MiB)")
    assert growth < size / 3, f"API memory grew by {growth / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB upload"
    assert client.files.content(uploaded.id).content[: len(line)] == line.encode()


def _rss(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) * 1024
    return 0


def test_up_again_starts_nothing_and_down_leaves_no_process(stack):
    again = tide(stack.env, *stack.up_args, timeout=400)
    assert again.returncode == 0, again.stderr
    assert stack.pids_now() == stack.pids
    assert all(_alive(pid) for pid in stack.pids.values())
    down = tide(stack.env, "stack", "down", "--state-dir", str(stack.state), timeout=400)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in stack.pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [name for name, pid in stack.pids.items() if _alive(pid)]
    assert not list((stack.state / "pids").glob("*.pid"))
