"""JSON logs: one object per line, with the job and shard ids bound around a Celery task or an API request, or named
in the message; text logs unchanged."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest

from tide.jobs.log_context import bind
from tide.logs import ContextFilter, JsonFormatter, LogContext, configure_logging


@pytest.fixture
def lines():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tide.test-logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    formatter = JsonFormatter("worker")
    yield logger, lambda: [json.loads(formatter.format(r)) for r in records]
    logger.removeHandler(handler)


def test_ids_come_from_the_bound_context_or_the_message(lines):
    logger, read = lines
    with bind(job_id="job_0123456789abcdef01234567", shard_id=3):
        logger.info("writing parts")
    logger.info("shard %s/%d done", "job_aaaaaaaaaaaaaaaaaaaaaaaa", 7)
    logger.warning("heartbeat not published")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    first, second, third, fourth = read()
    assert (first["job_id"], first["shard_id"], first["message"]) == ("job_0123456789abcdef01234567", 3,
                                                                       "writing parts")
    assert (second["job_id"], second["shard_id"]) == ("job_aaaaaaaaaaaaaaaaaaaaaaaa", 7)
    assert third["job_id"] is None and third["shard_id"] is None and third["level"] == "WARNING"
    assert fourth["process"] == "worker" and "ValueError: boom" in fourth["exception"]


def test_celery_tasks_bind_their_shard_and_the_worker_root_logs_json(capsys):
    from celery import signals

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("worker", "json", "INFO", verbose=False)
        payload = {"job_id": "job_bbbbbbbbbbbbbbbbbbbbbbbb", "shard": {"index": 2}}
        signals.task_prerun.send(sender=None, task_id="t1", task=None, args=[payload], kwargs={})
        logging.getLogger("tide.worker").info("reading rows")
        signals.task_postrun.send(sender=None, task_id="t1", task=None, args=[payload], kwargs={})
        logging.getLogger("tide.worker").info("idle")
        assert signals.setup_logging.receivers  # Celery leaves this handler in place
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    task_line, idle_line = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert (task_line["job_id"], task_line["shard_id"], task_line["process"]) == (
        "job_bbbbbbbbbbbbbbbbbbbbbbbb", 2, "worker")
    assert idle_line["job_id"] is None


def test_api_requests_on_a_job_bind_its_id(lines):
    logger, read = lines

    async def app(scope, receive, send):
        logger.info("handling")

    middleware = LogContext(app)
    asyncio.run(middleware({"type": "http", "path": "/v1/batches/batch_cccccccccccccccccccccccc"}, None, None))
    asyncio.run(middleware({"type": "http", "path": "/v1/files"}, None, None))
    assert [line["job_id"] for line in read()] == ["batch_cccccccccccccccccccccccc", None]
