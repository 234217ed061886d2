"""The eval cron behind `tide beat`: fires eval runs on their cron slots while it holds the Redis lock, and runs the
webhook courier over the Redis outbox. (The engine's batch scheduler is another thing: engine/scheduler.py.)

Exactly one run per (suite, slot): only the lock holder fires, and every firing first claims its slot key in Redis,
so a second scheduler, a restart or a lost lock can never run the same slot twice.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tide.jobs.evals.runner import Executor, Harness, run_suite
from tide.jobs.evals.schedule import RedisLock, SlotClaims, SlotPicker, recent_slots, scheduled_run_id
from tide.jobs.evals.suites import Suite
from tide.jobs.storage import StorageConfig
from tide.jobs.webhooks.courier import Courier
from tide.jobs.webhooks.outbox import Outbox

logger = logging.getLogger("tide.beat")


class EvalCron:
    def __init__(self, suites: dict[str, Suite], client, executor: Executor, storage: StorageConfig, outbox: Outbox,
                 courier: Courier, grace_s: float = 3600.0, tick_s: float = 1.0, lock_ttl_s: float = 15.0,
                 max_runs: int = 4, clock: Callable[[], float] = time.time, harness: Harness | None = None) -> None:
        self.suites, self.redis, self.executor, self.outbox, self.courier = suites, client, executor, outbox, courier
        self.harness = harness  # runs the suites made of lm-eval tasks
        self.storage = storage
        self.picker = SlotPicker(suites, grace_s)
        self.lock = RedisLock(client, lock_ttl_s)
        self.claims = SlotClaims(client, lease_s=3 * lock_ttl_s)
        self.grace_s, self.lock_ttl_s = grace_s, lock_ttl_s
        self.tick_s, self.max_runs, self.clock = tick_s, max_runs, clock
        self.leading = False
        self.running: set[str] = set()
        self._running_lock = threading.Lock()
        self._recovered_at = 0.0

    def run(self, stop: threading.Event) -> None:
        courier = threading.Thread(target=self.courier.run, args=(stop,), name="tide-courier", daemon=True)
        courier.start()
        with ThreadPoolExecutor(self.max_runs, thread_name_prefix="tide-eval") as pool:
            while not stop.is_set():
                try:
                    self.tick(pool.submit)
                except Exception:  # Redis away for a moment: stay up, the lock and claims decide on return
                    logger.exception("scheduler tick failed")
                stop.wait(self.tick_s)
            self.lock.release()
        courier.join(timeout=30)

    def tick(self, submit: Callable) -> list[str]:
        """One round: hold (or wait for) the lock, then fire every due slot this leader can claim."""
        now = self.clock()
        holds = self.lock.hold()
        if holds and not self.leading:
            logger.info("leading: firing eval suites %s", ", ".join(sorted(self.suites)) or "(none)")
            self.picker.restart(now)
        elif self.leading and not holds:
            logger.warning("lost the scheduler lock; another tide beat leads")
        self.leading = holds
        with self._running_lock:
            self.claims.renew(list(self.running))  # every scheduler keeps its own runs' leases alive
        fired = []
        if holds:
            for name, slot in self.picker.due(now):
                run_id = scheduled_run_id(name, slot)
                if self.claims.claim(name, slot, run_id):
                    fired.append(self._start(submit, name, slot, run_id))
            if now - self._recovered_at >= self.lock_ttl_s:
                self._recovered_at = now
                fired += self._recover(submit, now)
        return fired

    def _recover(self, submit: Callable, now: float) -> list[str]:
        """Run again, under their run ids, slots within the grace window whose scheduler died mid-run."""
        again = []
        for name, suite in self.suites.items():
            for slot in recent_slots(suite, now - self.grace_s, now):
                run_id = self.claims.orphaned(name, slot)
                if run_id is not None:
                    logger.warning("eval %s: run %s was left unfinished; running it again", name, run_id)
                    again.append(self._start(submit, name, slot, run_id))
        return again

    def _start(self, submit: Callable, name: str, slot: float, run_id: str) -> str:
        with self._running_lock:
            self.running.add(run_id)
        submit(self._run, name, slot, run_id)
        return run_id

    def _run(self, name: str, slot: float, run_id: str) -> None:
        logger.info("eval %s: run %s starts", name, run_id)
        try:
            record = run_suite(name, self.suites[name], self.executor, self.storage, self.outbox,
                               scheduled_for=slot, run_id=run_id, clock=self.clock, harness=self.harness)
        except Exception as exc:  # a broken dataset or storage: logged, and the slot counts as done
            logger.error("eval %s: run %s failed: %s", name, run_id, exc)
        else:
            logger.info("eval %s: run %s %s, score %.3f, %d regressions", name, run_id, record.status,
                        record.score, len(record.regressions))
        self.claims.finish(run_id)
        with self._running_lock:
            self.running.discard(run_id)
