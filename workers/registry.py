"""Live workers, as each worker process announces itself in Redis: a heartbeat every few seconds carrying its served
model and its engine's figures, under a key that expires when the heartbeats stop. The API reads them for /metrics."""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from pydantic import BaseModel

from tide.jobs import keys
from tide.jobs.periodic import Periodic
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

    def __init__(self, redis, name: str, model: str, concurrency: int, figures: Callable[[], EngineFigures],
                 interval_s: float = HEARTBEAT_S) -> None:
        self._redis, self._figures = redis, figures
        self._info = dict(name=name, model=model, host=socket.gethostname(), pid=os.getpid(),
                          concurrency=concurrency, started_at=time.time())
        # A Redis blip must not kill the worker: the next beat tries again.
        self._beats = Periodic(self._beat, interval_s, "tide-heartbeat", logger, "heartbeat not published",
                               immediately=True)

    def start(self) -> "Heartbeat":
        self._beats.start()
        return self

    def stop(self) -> None:
        self._beats.stop()
        try:
            self._redis.delete(keys.worker(self._info["name"]))
        except Exception:  # Redis gone at shutdown: the key expires on its own
            pass

    def _beat(self) -> None:
        info = WorkerInfo(**self._info, last_heartbeat=time.time(), engine=self._figures())
        self._redis.set(keys.worker(info.name), info.model_dump_json(), ex=EXPIRE_S)


def live_workers(redis) -> list[WorkerInfo]:
    """Every worker whose heartbeat has not expired, by name."""
    names = sorted(redis.scan_iter(match=keys.WORKERS_PATTERN, count=200))
    values = redis.mget(names) if names else []
    return [WorkerInfo.model_validate_json(v) for v in values if v is not None]
