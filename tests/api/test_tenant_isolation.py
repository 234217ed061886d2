"""The security review's tenant findings on /v1/jobs: idempotency keys are each key's own (header or body, even
racing), `s3://` inputs and outputs only under the key's prefixes (403 otherwise), webhook URLs checked at submit,
and error messages never show the service's storage prefix."""
from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from tests.helpers.api import KEY, OTHER_KEY
from tests.helpers.dispatch import Recorder
from tide.jobs.lifecycle import plan_created
from tide.jobs.storage import resolve
from tide.key_policies import KeyPolicy

A = {"Authorization": f"Bearer {KEY}"}
B = {"Authorization": f"Bearer {OTHER_KEY}"}


@pytest.fixture
def client(api_app):
    with TestClient(api_app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def team_prefixes(api_app):
    svc = api_app.state.services
    saved = svc.settings
    svc.settings = saved.model_copy(update={"api_key_policies": {
        KEY: KeyPolicy(read=["s3://b/team-a/in/"], write=["s3://b/team-a/out"]),
        OTHER_KEY: KeyPolicy(read=["s3://b/team-b/"], write=["s3://b/team-b/"])}})
    yield
    svc.settings = saved


def test_two_keys_racing_one_idempotency_key_each_get_their_own_job(client):
    answers: dict[str, list[dict]] = {"a": [], "b": []}

    def post(who: str, headers: dict, body_key: bool) -> None:
        spec = {"input": f"s3://b/{who}.jsonl", "metadata": {"owner": who},
                **({"idempotency_key": "same"} if body_key else {})}
        extra = {} if body_key else {"Idempotency-Key": "same"}
        answers[who].append(client.post("/v1/jobs", headers={**headers, **extra}, json=spec).json())

    threads = [threading.Thread(target=post, args=(who, headers, i % 2 == 0))
               for i in range(6) for who, headers in (("a", A), ("b", B))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = {who: {answer["id"] for answer in got} for who, got in answers.items()}
    assert len(ids["a"]) == 1 and len(ids["b"]) == 1 and ids["a"] != ids["b"]  # header and body: one key
    for who, got in answers.items():
        assert all(a["spec"]["input"] == f"s3://b/{who}.jsonl" and a["spec"]["metadata"] == {"owner": who}
                   and a["spec"]["idempotency_key"] == "same" for a in got)
    mismatch = client.post("/v1/jobs", headers={**A, "Idempotency-Key": "x"},
                           json={"input": "s3://b/a.jsonl", "idempotency_key": "y"})
    assert mismatch.status_code == 400 and mismatch.json()["error"]["param"] == "idempotency_key"


@pytest.mark.parametrize("spec, param", [
    ({"input": "s3://b/team-b/in.jsonl"}, "input"),
    ({"input": "s3://b/team-a/in-other/x.jsonl"}, "input"),
    ({"input": "s3://b/team-a/in/../../team-b/x.jsonl"}, "input"),
    ({"input": "s3://other-bucket/team-a/in/x.jsonl"}, "input"),
    ({"input": "s3://b/team-a/in/x.jsonl", "output": "s3://b/team-a/outside/"}, "output"),
    ({"input": "s3://b/team-a/in/x.jsonl", "output": "s3://b/team-b/"}, "output"),
])
def test_s3_uris_outside_the_keys_prefixes_are_refused_with_403(client, team_prefixes, spec, param):
    answer = client.post("/v1/jobs", headers=A, json=spec)
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["code"] == "permission_denied" and error["type"] == "permission_error"


def test_s3_uris_under_the_keys_prefixes_are_accepted(client, team_prefixes):
    mine = client.post("/v1/jobs", headers=A, json={"input": "s3://b/team-a/in/x.jsonl",
                                                    "output": "s3://b/team-a/out/run-1/"})
    assert mine.status_code == 200, mine.text
    assert client.post("/v1/jobs", headers=B, json={"input": "s3://b/team-a/in/x.jsonl"}).status_code == 403


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://10.0.0.7/h",
                                 "http://localhost/h", "ftp://example.org/h"])
def test_a_webhook_url_to_an_internal_address_is_refused_at_submit(client, url):
    answer = client.post("/v1/jobs", headers=A, json={"input": "s3://b/x.jsonl", "webhook_url": url})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "webhook_url", answer.text


def test_an_error_message_shows_no_storage_prefix(client, api_app):
    svc = api_app.state.services
    uploaded = client.post("/v1/files", headers=A, data={"purpose": "batch"},
                           files={"file": ("in.jsonl", b'{"prompt": "hi"}\n')}).json()
    job = client.post("/v1/jobs", headers=A, json={"input": uploaded["id"]}).json()
    record = svc.catalog.get_file(uploaded["id"])
    resolve(record.uri, svc.storage_config).delete()  # the input vanished before a worker read it
    failed = plan_created(job["id"], svc.store, Recorder(), svc.storage_config)
    assert svc.storage.uri in failed.error
    shown = client.get(f"/v1/jobs/{job['id']}", headers=A).json()
    assert shown["status"] == "failed" and svc.storage.uri not in shown["error"]
    assert "<storage>/files/" in shown["error"]
