"""S3 requests retry transient failures with backoff for the configured time; other failures raise at once."""
from __future__ import annotations

import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from tide.jobs.storage import StorageError, retrying


def flaky(failures: list[Exception]):
    calls = []

    def action():
        calls.append(time.monotonic())
        if failures:
            raise failures.pop(0)
        return "ok"

    return action, calls


def test_an_unreachable_endpoint_is_retried_until_it_answers():
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    slow = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
    action, calls = flaky([down, down, slow])
    assert retrying("s3://b/k", "write", action, retry_s=30) == "ok" and len(calls) == 4


def test_a_missing_object_fails_at_once_and_an_outage_past_the_budget_fails_naming_the_object():
    missing = ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"},
                           "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject")
    action, calls = flaky([missing])
    with pytest.raises(StorageError, match="cannot read s3://b/k: NoSuchKey"):
        retrying("s3://b/k", "read", action, retry_s=30)
    assert len(calls) == 1
    action, calls = flaky([EndpointConnectionError(endpoint_url="http://127.0.0.1:1")] * 100)
    with pytest.raises(StorageError, match="S3 endpoint unreachable"):
        retrying("s3://b/k", "read", action, retry_s=0.5)
    assert 1 < len(calls) < 10 and calls[-1] - calls[0] < 2
