"""Creating a batch as OpenAI's API does: a model nobody serves is refused at once (or, opted in, waits), aliases map
OpenAI names onto served models, endpoints Tide does not serve and files past the limits are refused at create, and
no first line, however deep, makes create fail with a 5xx."""
from __future__ import annotations

import contextlib
import json
import time

import pytest
from fastapi.testclient import TestClient

from tests.helpers.api import KEY
from tests.helpers.dispatch import Recorder
from tide.jobs import keys
from tide.jobs.lifecycle import plan_created
from tide.jobs.state import EngineFigures
from tide.workers.registry import WorkerInfo

AUTH = {"Authorization": f"Bearer {KEY}"}
SERVED = "served-here"


@pytest.fixture
def client(api_app):
    with TestClient(api_app, raise_server_exceptions=False) as client:
        yield client


@contextlib.contextmanager
def settings(api_app, **changes):
    svc = api_app.state.services
    saved = svc.settings
    svc.settings = saved.model_copy(update=changes)
    try:
        yield svc
    finally:
        svc.settings = saved


@pytest.fixture
def live_worker(api_app):
    redis = api_app.state.services.store.redis
    now = time.time()
    info = WorkerInfo(name="w-served", model=SERVED, host="h", pid=1, concurrency=1, started_at=now,
                      last_heartbeat=now, engine=EngineFigures())
    redis.set(keys.worker(info.name), info.model_dump_json(), ex=30)
    yield info
    redis.delete(keys.worker(info.name))


def upload(client, lines: list) -> str:
    content = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    answer = client.post("/v1/files", headers=AUTH, data={"purpose": "batch"}, files={"file": ("b.jsonl", content)})
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def chat_line(model: str | None, i: int = 0) -> dict:
    body = {"messages": [{"role": "user", "content": "hi"}], **({"model": model} if model else {})}
    return {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def create(client, file_id: str, endpoint: str = "/v1/chat/completions"):
    return client.post("/v1/batches", headers=AUTH, json={"input_file_id": file_id, "endpoint": endpoint,
                                                          "completion_window": "24h"})


def test_a_batch_naming_an_unserved_model_is_refused_at_once_listing_the_served_ones(client, api_app, live_worker):
    file_id = upload(client, [chat_line("gpt-4o-mini")])
    with settings(api_app, accept_unserved=False):
        started = time.monotonic()
        answer = create(client, file_id)
        took = time.monotonic() - started
        job = client.post("/v1/jobs", headers=AUTH, json={"input": file_id, "model": "gpt-4o-mini"})
    assert answer.status_code == 400 and took < 1.0, (answer.text, took)
    error = answer.json()["error"]
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert "'gpt-4o-mini'" in error["message"] and SERVED in error["message"]
    assert job.status_code == 400 and job.json()["error"]["param"] == "model"


def test_an_alias_maps_an_openai_name_onto_a_served_model(client, api_app, live_worker):
    file_id = upload(client, [chat_line("gpt-4o-mini", 0), chat_line(None, 1), chat_line(SERVED, 2)])
    with settings(api_app, accept_unserved=False, model_aliases={"gpt-4o-mini": SERVED}):
        answer = create(client, file_id)
    assert answer.status_code == 200, answer.text
    batch = answer.json()
    assert batch["model"] == SERVED and batch["status"] == "validating" and batch["errors"] is None
    spec = api_app.state.services.store.get_job(batch["id"]).spec
    assert spec.requested_model == "gpt-4o-mini" and spec.line_models() == {"gpt-4o-mini", SERVED}
    assert spec.max_requests == 50_000


def test_opted_in_an_unserved_model_may_wait_for_a_worker(client, api_app):
    file_id = upload(client, [chat_line("nobody-serves-this")])
    answer = create(client, file_id)  # the tests' app accepts unserved models
    assert answer.status_code == 200 and answer.json()["model"] == "nobody-serves-this"


def test_endpoints_not_served_and_files_past_the_limit_are_refused_at_create(client, api_app):
    file_id = upload(client, [chat_line(None)])
    moderations = create(client, file_id, "/v1/moderations")
    assert moderations.status_code == 400 and moderations.json()["error"]["code"] == "unsupported_endpoint"
    assert "/v1/embeddings" in moderations.json()["error"]["message"]  # it names the endpoints served
    with settings(api_app, batch_max_file_bytes=10):
        big = create(client, file_id)
    assert big.status_code == 400 and big.json()["error"]["code"] == "file_too_large"
    assert create(client, upload(client, [{"custom_id": "r", "url": "/v1/responses", "body": {"input": "x"}}]),
                  "/v1/responses").status_code == 200
    embeddings = create(client, upload(client, [{"custom_id": "e", "url": "/v1/embeddings", "body": {"input": "x"}}]),
                        "/v1/embeddings")
    assert embeddings.status_code == 200 and embeddings.json()["endpoint"] == "/v1/embeddings"


def test_a_deeply_nested_first_line_does_not_break_create(client):
    file_id = upload(client, ['{"custom_id": "d", "body": ' + "[" * 100_000 + "]" * 100_000 + "}", chat_line(None)])
    answer = create(client, file_id)
    assert answer.status_code == 200, answer.text  # its line fails at validation, like any line that is not JSON
    blank_first = upload(client, ["", chat_line("nobody-serves-this")])
    assert create(client, blank_first).json()["model"] == "nobody-serves-this"


def test_errors_show_only_on_a_failed_batch(client, api_app):
    svc = api_app.state.services
    answer = create(client, upload(client, ["{not json", chat_line(None, 1)])).json()
    failed = plan_created(answer["id"], svc.store, Recorder(), svc.storage_config)
    assert failed.status.value == "failed"
    batch = client.get(f"/v1/batches/{answer['id']}", headers=AUTH).json()
    assert batch["status"] == "failed" and batch["failed_at"] is not None
    assert batch["errors"]["data"] == [{"code": "invalid_json", "line": 1, "param": None,
                                        "message": batch["errors"]["data"][0]["message"]}]
    running = create(client, upload(client, [chat_line(None), chat_line(None, 1) | {"body": {"n": -1}}])).json()
    assert plan_created(running["id"], svc.store, Recorder(), svc.storage_config).status.value == "in_progress"
    assert client.get(f"/v1/batches/{running['id']}", headers=AUTH).json()["errors"] is None
