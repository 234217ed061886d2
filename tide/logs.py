"""Logging of the worker, API and scheduler: text as before, or `TIDE_LOG_FORMAT=json`, one JSON object per line
with `job_id` and `shard_id` on every line (null when the line concerns no job).

Ids come from the context the line was written in (`tide.jobs.log_context`: bound per Celery task and per API request),
else from the message itself (a job id, and `job/N` or `job.shard-N` naming a shard).
"""
from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time

from tide.jobs.log_context import bind, current
from tide.jobs.redaction import Redactor

JOB_ID = re.compile(r"\b((?:job|batch)_[0-9a-f]{8,})(?:(?:/|\.shard-)(\d+))?")
PATH_ID = re.compile(r"^/v1/(?:jobs|batches)/((?:job|batch)_[0-9a-f]+)")
SERVICES = ("worker", "api", "beat")


class ContextFilter(logging.Filter):
    """Stamps each record with the ids bound where it was written (formatting may happen later, elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.tide_ids = current()
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        ids = dict(getattr(record, "tide_ids", None) or current())
        if "job_id" not in ids:
            found = JOB_ID.search(message)
            if found:
                ids["job_id"] = found.group(1)
                ids.setdefault("shard_id", int(found.group(2)) if found.group(2) else None)
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name, "process": self.role, "pid": record.process,
                "thread": record.threadName, "job_id": ids.get("job_id"), "shard_id": ids.get("shard_id"),
                "message": message}
        if record.exc_info:
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(command: str, log_format: str, log_level: str, verbose: bool,
                      redactor: Redactor | None = None) -> None:
    """Text: the CLI's usual basicConfig. JSON: one handler on the root logger for every library, and for the worker
    Celery's own logging setup skipped (it would replace the handler) and ids bound around each task. Either way
    every record passes `redactor` first."""
    if redactor is not None:
        redactor.install()
    if log_format != "json":
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    role = command if command in SERVICES else "cli"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(role))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level.upper() if role != "cli" or verbose else logging.WARNING)
    logging.captureWarnings(True)  # Python warnings (Celery's among them) as JSON lines too
    if role == "worker":
        _bind_celery_tasks()


def uvicorn_log_config(log_format: str) -> dict | None:
    """uvicorn's own config for text; none for JSON, so its loggers reach the root handler."""
    if log_format == "json":
        return None
    from uvicorn.config import LOGGING_CONFIG

    return LOGGING_CONFIG


_TASKS: dict[tuple[str, int], object] = {}  # (task id, thread) -> its bound ids


def _bind_celery_tasks() -> None:
    from celery import signals

    signals.setup_logging.connect(_keep_logging, weak=False)
    signals.task_prerun.connect(_task_started, weak=False)
    signals.task_postrun.connect(_task_ended, weak=False)


def _keep_logging(**_) -> None:
    """Connected to Celery's setup_logging: its presence tells Celery to leave logging as configured."""


def _task_started(task_id=None, args=None, **_) -> None:
    payload = args[0] if args else None
    if isinstance(payload, dict):  # tide.run_shard: a ShardTask payload
        ids = {"job_id": payload.get("job_id"), "shard_id": (payload.get("shard") or {}).get("index")}
    else:  # tide.finalize_job: the job id
        ids = {"job_id": payload if isinstance(payload, str) else None}
    context = bind(**ids)
    context.__enter__()
    _TASKS[(task_id, threading.get_ident())] = context


def _task_ended(task_id=None, **_) -> None:
    context = _TASKS.pop((task_id, threading.get_ident()), None)
    if context is not None:
        context.__exit__(None, None, None)


class LogContext:
    """ASGI middleware: a request on `/v1/jobs/{id}...` or `/v1/batches/{id}...` logs with that job id."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        found = PATH_ID.match(scope.get("path", "")) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        with bind(job_id=found.group(1)):
            await self.app(scope, receive, send)
