"""Standard Webhooks delivery against a real HTTP receiver on loopback, verified with the `standardwebhooks` package."""
from __future__ import annotations

import json
import threading
import time

import fakeredis
import pytest
from standardwebhooks import Webhook

from tests.helpers.pipeline import run_local
from tests.helpers.receiver import SECRET
from tests.helpers.rows import write_jsonl
from tests.helpers.waiting import until
from tide.jobs.specs import JobSpec
from tide.jobs.webhooks.courier import Courier, WebhookConfig, enqueue, parse_schedule, replay
from tide.jobs.webhooks.delivery import WebhookRefused, check_url, parse_retry_after
from tide.jobs.webhooks.events import DeliveryState
from tide.jobs.webhooks.outbox import MemoryOutbox, RedisOutbox
from tide.jobs.webhooks.signing import sign_headers

FAST = "0,0.05,0.05,0.05"


def config(schedule: str = FAST, secrets: list[str] | None = None) -> WebhookConfig:
    return WebhookConfig(secrets=[SECRET] if secrets is None else secrets, schedule=schedule, allow_private=True,
                         timeout_s=2)


def verify(headers: dict, body: bytes, secret: str = SECRET) -> dict:
    return Webhook(secret).verify(body, headers)


def test_500_twice_then_2xx_sends_one_webhook_id_three_times_each_signed(receiver):
    hook = receiver([500, 503])
    outbox = MemoryOutbox()
    delivery = enqueue(outbox, "job_1", hook.url, "batch.completed", {"id": "job_1", "completed": 3}, time.time())
    Courier(outbox, config()).drain()
    assert [code for _, _, code in hook.received] == [500, 503, 204]
    assert {h["webhook-id"] for h, _, _ in hook.received} == {delivery.id}
    for headers, body, _ in hook.received:
        assert verify(headers, body) == {"type": "batch.completed", "timestamp": json.loads(body)["timestamp"],
                                         "data": {"id": "job_1", "completed": 3}}
    log = outbox.log("job_1")
    assert [(e.attempt, e.status_code, e.outcome) for e in log] == [(1, 500, "retry"), (2, 503, "retry"),
                                                                    (3, 204, "delivered")]
    assert outbox.get(delivery.id).state == DeliveryState.DELIVERED


def test_receiver_down_at_first_gets_the_event_once_through_the_redis_outbox(receiver):
    hook = receiver(started=False)
    outbox = RedisOutbox(fakeredis.FakeRedis())
    enqueue(outbox, "job_2", hook.url, "batch.failed", {"id": "job_2"}, time.time())
    stop = threading.Event()
    courier = Courier(RedisOutbox(outbox.redis), config("0,0.2,0.2,0.2,0.2,0.2"))
    thread = threading.Thread(target=courier.run, args=(stop, 0.02))
    thread.start()
    try:
        until(lambda: len(outbox.log("job_2")) >= 1)
        hook.start()
        until(lambda: hook.accepted())
        time.sleep(0.3)  # one more retry interval: nothing else may arrive
    finally:
        stop.set()
        thread.join()
    assert len(hook.received) == 1 and verify(*hook.received[0][:2])["type"] == "batch.failed"
    log = outbox.log("job_2")
    assert log[0].outcome == "retry" and log[0].status_code is None and log[0].error
    assert log[-1].outcome == "delivered" and outbox.next_due() is None


def test_two_couriers_never_attempt_the_same_delivery_twice(receiver):
    hook = receiver()
    client = fakeredis.FakeRedis()
    for i in range(20):
        enqueue(RedisOutbox(client), f"job_{i}", hook.url, "batch.completed", {"id": f"job_{i}"}, time.time())
    couriers = [Courier(RedisOutbox(client), config()) for _ in range(2)]
    threads = [threading.Thread(target=c.pump) for c in couriers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    while couriers[0].pump():
        pass
    assert sorted(h["webhook-id"] for h, _, _ in hook.received) == sorted(
        {h["webhook-id"] for h, _, _ in hook.received}) and len(hook.received) == 20


def test_410_disables_the_endpoint_for_that_job_and_4xx_is_final(receiver):
    gone, bad = receiver([410]), receiver([400])
    outbox = MemoryOutbox()
    enqueue(outbox, "job_3", gone.url, "batch.completed", {"id": "job_3"}, time.time())
    enqueue(outbox, "job_4", bad.url, "batch.completed", {"id": "job_4"}, time.time())
    Courier(outbox, config()).drain()
    enqueue(outbox, "job_3", gone.url, "eval.completed", {"id": "job_3"}, time.time())
    Courier(outbox, config()).drain()
    assert len(gone.received) == 1 and [e.outcome for e in outbox.log("job_3")] == ["gone", "gone"]
    assert len(bad.received) == 1 and [e.outcome for e in outbox.log("job_4")] == ["failed"]


def test_redirects_are_not_followed(receiver):
    hook = receiver([302])
    outbox = MemoryOutbox()
    enqueue(outbox, "job_5", hook.url, "batch.completed", {"id": "job_5"}, time.time())
    Courier(outbox, config()).drain()
    assert len(hook.received) == 1 and outbox.log("job_5")[0].status_code == 302


def test_retry_after_stretches_the_wait_and_the_schedule_runs_out(receiver):
    hook = receiver([429], default=500, headers={"Retry-After": "7"})
    outbox = MemoryOutbox()
    delivery = enqueue(outbox, "job_6", hook.url, "batch.completed", {"id": "job_6"}, time.time())
    slept: list[float] = []
    clock = [time.time()]

    def sleep(s: float) -> None:
        slept.append(round(s, 3))
        clock[0] += s

    Courier(outbox, config("0,1,2"), clock=lambda: clock[0]).drain(sleep)
    assert slept == [7.0, 7.0] and len(hook.received) == 3
    assert outbox.get(delivery.id).state == DeliveryState.FAILED and outbox.log("job_6")[-1].outcome == "failed"


def test_rotation_signs_with_every_secret_and_secrets_stay_out_of_the_log(receiver):
    other = "whsec_" + "b" * 32
    plain = "integration-secret"
    hook = receiver()
    outbox = MemoryOutbox()
    enqueue(outbox, "job_7", hook.url, "batch.completed", {"id": "job_7"}, time.time())
    Courier(outbox, config(secrets=[SECRET, other, plain])).drain()
    headers, body, _ = hook.received[0]
    assert len(headers["webhook-signature"].split()) == 3
    for secret in (SECRET, other):
        verify(headers, body, secret)
    Webhook(plain.encode()).verify(body, headers)
    dumped = "".join(e.model_dump_json() for e in outbox.log("job_7"))
    assert SECRET not in dumped and plain not in dumped


def test_ssrf_guard_refuses_internal_addresses_unless_allowed(receiver):
    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x", "http://169.254.169.254/x",
                "http://[::1]/x"):
        with pytest.raises(WebhookRefused, match="TIDE_WEBHOOK_ALLOW_PRIVATE"):
            check_url(url, allow_private=False)
    with pytest.raises(WebhookRefused, match="http"):
        check_url("ftp://example.org/x", allow_private=True)
    hook = receiver()
    outbox = MemoryOutbox()
    enqueue(outbox, "job_8", hook.url, "batch.completed", {"id": "job_8"}, time.time())
    Courier(outbox, config().model_copy(update={"allow_private": False})).drain()
    assert not hook.received and "internal address" in outbox.log("job_8")[0].error


def test_replay_sends_the_event_again_under_its_webhook_id(receiver):
    hook = receiver()
    outbox = MemoryOutbox()
    enqueue(outbox, "job_9", hook.url, "batch.completed", {"id": "job_9"}, time.time())
    Courier(outbox, config()).drain()
    replay(outbox, "job_9", time.time())
    Courier(outbox, config()).drain()
    assert len(hook.received) == 2 and hook.received[0][0]["webhook-id"] == hook.received[1][0]["webhook-id"]


def test_schedule_and_header_parsing():
    assert parse_schedule("0, 5,300") == (0.0, 5.0, 300.0)
    with pytest.raises(ValueError, match="comma-separated seconds"):
        parse_schedule("0,5m")
    assert parse_retry_after("12") == 12.0 and parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
    headers = sign_headers([], "msg_1", 1000.9, "{}")
    assert headers == {"webhook-id": "msg_1", "webhook-timestamp": "1000"}


def test_tide_run_delivers_its_webhook_in_process_before_returning(tmp_path, service, receiver):
    hook = receiver([500])
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "one two"}])
    spec = JobSpec(input=str(path), output=str(tmp_path / "out"), webhook_url=hook.url)
    job = run_local(spec, service, webhooks=config())
    assert len(hook.received) == 2
    payload = verify(*hook.received[1][:2])
    assert payload["type"] == "batch.completed"
    assert payload["data"] == {"id": job.id, "status": "completed", "total": 1, "completed": 1, "failed": 0}
