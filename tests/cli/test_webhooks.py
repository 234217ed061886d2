"""`tide webhooks JOB` and `tide webhooks replay JOB` over a Redis outbox."""
from __future__ import annotations

import time

import fakeredis

from tide.cli import main
from tide.jobs.store import RedisJobStore
from tide.jobs.webhooks.courier import Courier, WebhookConfig, enqueue
from tide.jobs.webhooks.outbox import RedisOutbox


def test_log_and_replay(receiver, monkeypatch, capsys):
    hook = receiver([500])
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(RedisJobStore, "from_url", classmethod(lambda cls, url: cls(client)))
    monkeypatch.setenv("TIDE_WEBHOOK_ALLOW_PRIVATE", "true")
    from tide.settings import get_settings

    get_settings.cache_clear()
    outbox = RedisOutbox(client)
    delivery = enqueue(outbox, "job_x", hook.url, "batch.completed", {"id": "job_x"}, time.time())
    Courier(outbox, WebhookConfig(allow_private=True, schedule="0,0.01")).drain()
    try:
        assert main(["webhooks", "job_x"]) == 0
        out = capsys.readouterr().out
        assert f"{delivery.id} batch.completed: delivered after 2 attempt(s)" in out
        assert "attempt 1  HTTP 500  retry" in out and "attempt 2  HTTP 204  delivered" in out
        assert main(["webhooks", "replay", "job_x"]) == 0
        assert "delivered" in capsys.readouterr().out and len(hook.received) == 3
        assert main(["webhooks", "job_nope"]) == 2
        assert "no webhook events for 'job_nope'" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
