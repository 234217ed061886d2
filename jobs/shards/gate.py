"""The engine a process's shards share: a careful re-run has it to itself."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class EngineGate:
    """Careful re-runs have this process's engine to themselves (other shards wait, and a careful one waits for
    those running to finish), so a worker that dies during one was killed by the one row it had in flight."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._normal = self._careful_waiting = 0
        self._careful = False

    @contextmanager
    def enter(self, careful: bool) -> Iterator[None]:
        with self._cond:
            if careful:
                self._careful_waiting += 1
                self._cond.wait_for(lambda: not self._careful and self._normal == 0)
                self._careful_waiting -= 1
                self._careful = True
            else:
                self._cond.wait_for(lambda: not self._careful and self._careful_waiting == 0)
                self._normal += 1
        try:
            yield
        finally:
            with self._cond:
                if careful:
                    self._careful = False
                else:
                    self._normal -= 1
                self._cond.notify_all()
