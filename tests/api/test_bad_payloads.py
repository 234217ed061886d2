"""Bad API payloads, generated (hypothesis): broken JSON, wrong types, deep nesting, NaN and infinities, unknown
fields, absurd values, on the job and batch endpoints. Every answer is a 4xx in OpenAI's error shape naming what
is wrong, or a created object; never a 5xx. Prints how many payloads it tried (`FUZZ`, -s to see it)."""
from __future__ import annotations

import json

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers.api import KEY
from tests.helpers.fuzz import BREAKAGES, mutate

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=20))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                             max_size=3), max_leaves=8)
JOB_FIELDS = st.sampled_from(["input", "output", "model", "sampling", "priority", "metadata", "webhook_url",
                              "completion_window", "shard_rows", "endpoint", "format", "columns", "extra"])
BATCH_FIELDS = st.sampled_from(["input_file_id", "endpoint", "completion_window", "metadata", "extra"])


def body(fields):
    plausible = st.sampled_from(["s3://b/in.jsonl", "/v1/chat/completions", "24h", "file-x", "-1", ""])
    return st.dictionaries(fields, VALUES | plausible, max_size=6)


def payloads(fields):
    return st.builds(lambda d, how, at: mutate(json.dumps(d, allow_nan=True).encode(), how, at, 50, 500), body(fields),
                     st.sampled_from(BREAKAGES),
                     st.integers(0, 100))


tried = {"POST /v1/jobs": 0, "POST /v1/batches": 0}


def test_bad_payloads_get_4xx_in_openai_shape_never_5xx(api_app):
    client = TestClient(api_app, raise_server_exceptions=False)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for path, fields in (("/v1/jobs", JOB_FIELDS), ("/v1/batches", BATCH_FIELDS)):

        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(payload=payloads(fields))
        def check(payload: bytes) -> None:
            tried[f"POST {path}"] += 1
            response = client.post(path, content=payload, headers=headers)
            assert response.status_code < 500, (payload[:200], response.text[:300])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error["message"] and error["type"]

        check()
    print(f"\nFUZZ {', '.join(f'{k}: {v}' for k, v in tried.items())}")
    assert all(n >= 100 for n in tried.values())
