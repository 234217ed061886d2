"""The job and shard a thread (or request) is working for, so every log line it writes can name them.

Entry points bind ids where work starts (a Celery task, an API request); formatters read `current()`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_IDS: ContextVar[dict[str, object]] = ContextVar("tide_log_ids", default={})


@contextmanager
def bind(**ids: object) -> Iterator[None]:
    token = _IDS.set({**_IDS.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _IDS.reset(token)


def current() -> dict[str, object]:
    return _IDS.get()
