"""Renews the leases one worker process holds, every `renew_s`, on its own thread (never the engine's step thread).

A lease the book no longer holds is lost: a reaper gave the shard to another attempt. Its `lost` event is set, and
the shard runner stops that attempt without committing anything.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tide.jobs.leases.book import Lease, LeaseBook
from tide.jobs.periodic import Periodic

logger = logging.getLogger("tide.leases")


class LeaseKeeper:
    def __init__(self, book: LeaseBook, renew_s: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.book, self.clock = book, clock
        self._held: dict[Lease, threading.Event] = {}
        self._lock = threading.Lock()
        # Redis away for a moment: the next round tries again; a lease that lapses meanwhile is fenced.
        self._rounds = Periodic(self.renew_once, renew_s, "tide-lease-keeper", logger, "leases not renewed")

    def start(self) -> "LeaseKeeper":
        self._rounds.start()
        return self

    def stop(self) -> None:
        self._rounds.stop()

    def hold(self, lease: Lease) -> threading.Event:
        """Keep renewing `lease`; the returned event is set if it is lost."""
        lost = threading.Event()
        with self._lock:
            self._held[lease] = lost
        return lost

    def drop(self, lease: Lease) -> None:
        with self._lock:
            self._held.pop(lease, None)

    def renew_once(self) -> None:
        with self._lock:
            leases = list(self._held)
        answers = self.book.renew(leases, self.clock())
        for lease, held in zip(leases, answers):
            if not held:
                logger.warning("lost the lease on shard %s/%d (attempt %d); another attempt runs it",
                               lease.job_id, lease.index, lease.token)
                with self._lock:
                    lost = self._held.pop(lease, None)
                if lost is not None:
                    lost.set()
