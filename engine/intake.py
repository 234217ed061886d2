"""Requests handed from any thread to an engine's step thread: new ones, aborts, and the ids still in the engine.

`LLMEngine` and the embedding engine share it: callers add and abort from their own threads, the step thread takes
what arrived at the start of each step and says when a request is done with. An id is live from `add` until
`release`, so a duplicate id is refused even while its first request is still waiting to be taken.
"""
from __future__ import annotations

import threading
from typing import Generic, TypeVar

R = TypeVar("R")


class Intake(Generic[R]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new: list[R] = []
        self._aborts: list[str] = []
        self._live: set[str] = set()

    def add(self, request_id: str, request: R) -> None:
        """Queue a request; raises ValueError when a request with this id is still in the engine."""
        with self._lock:
            if request_id in self._live:
                raise ValueError(f"request id {request_id!r} is already in the engine")
            self._live.add(request_id)
            self._new.append(request)

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts.append(request_id)

    def take(self) -> tuple[list[R], list[str]]:
        """What arrived since the last call: (new requests, ids to abort), in arrival order."""
        with self._lock:
            new, self._new = self._new, []
            aborts, self._aborts = self._aborts, []
        return new, aborts

    def release(self, request_id: str) -> None:
        """The request is done with (finished, failed or aborted); its id may be used again."""
        with self._lock:
            self._live.discard(request_id)

    def has_live(self) -> bool:
        with self._lock:
            return bool(self._live)
