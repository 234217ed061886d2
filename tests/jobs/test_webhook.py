"""Webhook delivery against a real local HTTP server: signature, retries with backoff, and the job payload."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from jobs.embedded import run_embedded
from jobs.specs import JobSpec
from jobs.webhook import SECRET_ENV, SIGNATURE_HEADER, deliver, sign, verify_signature
from tests.jobs.conftest import write_jsonl


@pytest.fixture
def receiver():
    """An HTTP server that answers 500 to the first `fail_first` POSTs, then 204; it records every delivery."""
    received: list[tuple[dict, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(500 if len(received) <= server.fail_first else 204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.fail_first = 0
    server.received = received
    server.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_delivery_retries_server_errors_with_doubling_backoff_and_signs_each_attempt(receiver):
    receiver.fail_first = 2
    waits = []
    assert deliver(receiver.url, b'{"a": 1}', "s3cret", backoff_s=0.1, sleep=waits.append)
    assert waits == [0.1, 0.2] and len(receiver.received) == 3
    headers, body = receiver.received[-1]
    assert verify_signature("s3cret", headers[SIGNATURE_HEADER], body, now=time.time())


def test_delivery_gives_up_after_the_last_attempt(receiver):
    receiver.fail_first = 99
    assert not deliver(receiver.url, b"{}", "k", attempts=3, sleep=lambda s: None)
    assert len(receiver.received) == 3


def test_signature_rejects_tampering_wrong_secret_and_replays():
    header = sign("k", b"body", 1000)
    assert verify_signature("k", header, b"body", now=1010)
    assert not verify_signature("k", header, b"bodY", now=1010)
    assert not verify_signature("other", header, b"body", now=1010)
    assert not verify_signature("k", header, b"body", now=1000 + 3600)
    assert not verify_signature("k", "garbage", b"body", now=1000)


def test_finished_job_posts_a_signed_webhook(tmp_path, service, receiver, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, "hooksecret")
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "one two"}])
    spec = JobSpec(input=str(path), output=str(tmp_path / "out"), webhook_url=receiver.url,
                   metadata={"team": "search"})
    job = run_embedded(spec, service, show_progress=False)
    headers, body = receiver.received[0]
    assert verify_signature("hooksecret", headers[SIGNATURE_HEADER], body, now=time.time())
    payload = json.loads(body)
    assert payload["type"] == "job.completed" and payload["job"]["id"] == job.id
    assert payload["job"]["request_counts"]["completed"] == 1 and payload["job"]["spec"]["metadata"] == {
        "team": "search"}
