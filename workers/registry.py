"""Live workers, as each worker process announces itself in Redis: a heartbeat every few seconds carrying its served
model and its engine's figures, under a key that expires when the heartbeats stop. The API reads them for /metrics."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time

from pydantic import BaseModel

from tide.jobs import keys
from tide.jobs.state import EngineFigures

logger = logging.getLogger("tide.worker")

HEARTBEAT_S = 5.0
EXPIRE_S = 30  # a worker missing for this long is gone


class WorkerInfo(BaseModel):
    name: str
    model: str
    host: str
    pid: int
    concurrency: int
    started_at: float
    last_heartbeat: float
    engine: EngineFigures


class Heartbeat:
    """Publishes `WorkerInfo` from a daemon thread until `stop()`; the key is removed on a clean stop."""

    def __init__(self, redis, name: str, model: str, concurrency: int, figures, interval_s: float = HEARTBEAT_S):
        self._redis, self._figures, self._interval = redis, figures, interval_s
        self._info = dict(name=name, model=model, host=socket.gethostname(), pid=os.getpid(),
                          concurrency=concurrency, started_at=time.time())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tide-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._redis.delete(keys.worker(self._info["name"]))
        except Exception:  # Redis gone at shutdown: the key expires on its own
            pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            info = WorkerInfo(**self._info, last_heartbeat=time.time(), engine=self._figures())
            try:
                self._redis.set(keys.worker(info.name), info.model_dump_json(), ex=EXPIRE_S)
            except Exception as exc:  # a Redis blip must not kill the worker; the next beat tries again
                logger.warning("heartbeat not published: %s", exc)
            self._stop.wait(self._interval)


def live_workers(redis) -> list[WorkerInfo]:
    """Every worker whose heartbeat has not expired, by name."""
    names = sorted(redis.scan_iter(match=keys.WORKERS_PATTERN, count=200))
    values = redis.mget(names) if names else []
    return [WorkerInfo.model_validate_json(v) for v in values if v is not None]
