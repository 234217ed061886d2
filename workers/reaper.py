"""The reaper's thread, in every `tide worker` and in `tide beat`: one sweep every `interval_s` (see
jobs/leases/reaper.py). A failed sweep (Redis away) is logged and the next one tries again."""
from __future__ import annotations

import logging
import threading

from tide.jobs.leases.reaper import Reaper

logger = logging.getLogger("tide.reaper")


class ReaperThread:
    def __init__(self, reaper: Reaper, interval_s: float = 5.0) -> None:
        self.reaper, self.interval_s = reaper, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tide-reaper", daemon=True)

    def start(self) -> "ReaperThread":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.reaper.sweep()
            except Exception as exc:
                logger.warning("reaper sweep failed: %s", exc)
