"""One action every `interval_s` on a daemon thread until stopped: lease renewals, reaper sweeps, heartbeats.

A round that raises (Redis away for a moment, say) is logged and the next round tries again.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Periodic:
    def __init__(self, action: Callable[[], object], interval_s: float, name: str, logger: logging.Logger,
                 failure: str, immediately: bool = False) -> None:
        self.action, self.interval_s, self.logger, self.failure = action, interval_s, logger, failure
        self.immediately = immediately  # a first round at start rather than after one interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> "Periodic":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the round in progress, if any."""
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        if self.immediately:
            self._round()
        while not self._stop.wait(self.interval_s):
            self._round()

    def _round(self) -> None:
        try:
            self.action()
        except Exception as exc:
            self.logger.warning("%s: %s", self.failure, exc)
