"""Property-based requests generated from the API's own OpenAPI schema (schemathesis strategies driven by
hypothesis): whatever arrives, no 5xx answer, every error in OpenAI's shape, and no key opens nothing."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.helpers.api import KEY

OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


@pytest.fixture(scope="module")
def operations(api_app):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    return [result.ok() for result in schema.get_all_operations()]


def test_the_schema_covers_every_route(operations):
    paths = {(op.method.upper(), op.path) for op in operations}
    assert {("POST", "/v1/files"), ("GET", "/v1/files/{file_id}/content"), ("POST", "/v1/batches"),
            ("POST", "/v1/batches/{batch_id}/cancel"), ("POST", "/v1/jobs"), ("GET", "/metrics")} <= paths


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_no_generated_request_gets_a_server_error(operations, with_key):
    headers = {"Authorization": f"Bearer {KEY}"} if with_key else {}
    tried = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30 if with_key else 8, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            nonlocal tried
            tried += 1
            response = case.call(headers=headers)
            assert response.status_code < 500, (case.method, case.formatted_path, response.text[:300])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"} and error["message"]
            if not with_key and case.path not in OPEN_PATHS:
                assert response.status_code in (400, 401, 404, 405, 413), (case.path, response.status_code)

        check()
    print(f"{tried} generated requests ({'with' if with_key else 'without'} a key)")
    assert tried > len(operations)


def test_bodies_over_their_limit_are_refused_in_the_openai_shape(api_app):
    from starlette.testclient import TestClient

    client = TestClient(api_app)
    headers = {"Authorization": f"Bearer {KEY}"}
    small = client.post("/v1/batches", content=b"{" + b" " * 70_000 + b"}",
                        headers={**headers, "Content-Type": "application/json"})
    assert small.status_code == 413 and small.json()["error"]["code"] == "request_too_large"
    upload = client.post("/v1/files", files={"file": ("a.jsonl", b"x" * (5 * 2**20))}, data={"purpose": "batch"},
                         headers=headers)
    assert upload.status_code == 413 and upload.json()["error"]["code"] == "request_too_large"
    fits = client.post("/v1/files", files={"file": ("a.jsonl", b"x" * (2 * 2**20))}, data={"purpose": "batch"},
                       headers=headers)
    assert fits.status_code == 200 and fits.json()["bytes"] == 2 * 2**20
