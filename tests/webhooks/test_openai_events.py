"""Batch events in OpenAI's shape, signed with the key's own secret, and a webhook host resolved once: the attempt
connects to the address the guard checked, whatever the name resolves to by then (DNS rebinding)."""
from __future__ import annotations

import base64
import json
import socket
import time

import pytest
from standardwebhooks import Webhook

from tests.helpers.receiver import SECRET
from tide.jobs.webhooks.courier import Courier, WebhookConfig, queue_delivery
from tide.jobs.webhooks.events import DeliveryState, openai_delivery
from tide.jobs.webhooks.outbox import MemoryOutbox

KEY_SECRET = "whsec_" + base64.b64encode(b"team-a-own-signing-key-000000000").decode()


def config(allow_private: bool = True) -> WebhookConfig:
    return WebhookConfig(secrets=[SECRET], key_secrets={"owner-a": [KEY_SECRET]}, schedule="0",
                         allow_private=allow_private, timeout_s=2)


def test_an_openai_batch_event_is_signed_with_the_keys_own_secret(receiver):
    hook = receiver()
    outbox = MemoryOutbox()
    now = time.time()
    delivery = queue_delivery(outbox, openai_delivery("batch_1", hook.url, "batch.completed", "batch_1", now,
                                                      signer="owner-a"))
    Courier(outbox, config()).drain()
    [(headers, body, code)] = hook.received
    event = Webhook(KEY_SECRET).verify(body, headers)
    assert event == {"id": event["id"], "object": "event", "created_at": int(now), "type": "batch.completed",
                     "data": {"id": "batch_1"}}
    assert event["id"].startswith("evt_") and headers["webhook-id"] == delivery.id != event["id"]
    with pytest.raises(Exception):
        Webhook(SECRET).verify(body, headers)  # another tenant's (or the service's) secret does not sign it
    assert outbox.get(delivery.id).state == DeliveryState.DELIVERED


class Rebinding:
    """getaddrinfo that answers `first` once (what the guard checks), then `later` (what a second lookup gets)."""

    def __init__(self, first: str, later: str) -> None:
        self.answers, self.calls = [first, later], 0
        self.real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if host != "hooks.rebind.test":
            return self.real(host, port, *args, **kwargs)
        address = self.answers[min(self.calls, 1)]
        self.calls += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))]


def test_the_attempt_goes_to_the_checked_address_not_a_second_lookups(receiver, monkeypatch):
    hook = receiver()
    monkeypatch.setattr(socket, "getaddrinfo", Rebinding("127.0.0.1", "10.255.255.1"))
    outbox = MemoryOutbox()
    queue_delivery(outbox, openai_delivery("batch_2", f"http://hooks.rebind.test:{hook.port}/in", "batch.failed",
                                           "batch_2", time.time()))
    Courier(outbox, config(allow_private=True)).drain()
    [(headers, body, code)] = hook.received  # reached over the checked address, the name kept for Host
    assert code == 204 and headers["host"] == f"hooks.rebind.test:{hook.port}"


def test_a_name_that_rebinds_to_loopback_after_the_check_is_not_reached(receiver, monkeypatch):
    hook = receiver()
    monkeypatch.setattr(socket, "getaddrinfo", Rebinding("93.184.216.34", "127.0.0.1"))
    dialled = []

    def create_connection(address, *args, **kwargs):
        dialled.append(address)
        raise ConnectionRefusedError("no network in the test")

    monkeypatch.setattr(socket, "create_connection", create_connection)
    outbox = MemoryOutbox()
    queue_delivery(outbox, openai_delivery("batch_3", f"http://hooks.rebind.test:{hook.port}/in", "batch.failed",
                                           "batch_3", time.time()))
    Courier(outbox, config(allow_private=False)).drain()
    assert dialled == [("93.184.216.34", hook.port)] and not hook.received
    assert outbox.log("batch_3")[0].outcome == "failed" and json.loads(outbox.deliveries("batch_3")[0].body)
