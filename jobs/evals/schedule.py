"""When suites run: cron slots as UTC instants, one active scheduler (a Redis lock), one run per (suite, slot).

Slots are computed in the suite's timezone and kept as UTC timestamps from then on, so a DST change can move a
local time but never makes one slot two. Several missed slots coalesce into the latest one; on start (or on taking
over the lock) the latest slot within the grace window runs if nobody ran it.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

from tide.jobs import keys
from tide.jobs.evals.suites import Suite


def latest_slot(suite: Suite, now: float) -> float | None:
    """The last cron slot at or before `now` (unix seconds, UTC); None for a suite without a schedule."""
    if suite.schedule is None:
        return None
    local = _local(suite, now)
    return croniter(suite.schedule, local).get_prev(datetime).timestamp()


def recent_slots(suite: Suite, since: float, now: float, limit: int = 1000) -> list[float]:
    """The cron slots in (since, now], newest first (at most `limit`)."""
    if suite.schedule is None:
        return []
    local = _local(suite, now)
    cron, slots = croniter(suite.schedule, local), []
    while len(slots) < limit:
        slot = cron.get_prev(datetime).timestamp()
        if slot <= since:
            break
        slots.append(slot)
    return slots


def _local(suite: Suite, now: float) -> datetime:
    """`now` in the suite's zone, a hair later so that a slot exactly at `now` counts as reached."""
    return datetime.fromtimestamp(now + 0.001, timezone.utc).astimezone(ZoneInfo(suite.timezone))


def slot_key(suite_name: str, slot: float) -> str:
    return f"{suite_name}@{datetime.fromtimestamp(slot, timezone.utc):%Y-%m-%dT%H:%M:%SZ}"


def scheduled_run_id(suite_name: str, slot: float) -> str:
    return f"{suite_name}-{datetime.fromtimestamp(slot, timezone.utc):%Y%m%dT%H%M%SZ}"


class SlotPicker:
    """The slots a leader should fire: per suite, the latest slot newer than what it already looked at."""

    def __init__(self, suites: dict[str, Suite], grace_s: float) -> None:
        self.suites, self.grace_s = suites, grace_s
        self._seen: dict[str, float] = {}
        self._leading: set[str] = set()  # suites looked at since this leader started

    def restart(self, now: float) -> None:
        """Becoming leader: anything within the grace window that nobody claimed is fair game again."""
        self._seen = {name: now - self.grace_s for name in self.suites}
        self._leading = set()

    def due(self, now: float) -> list[tuple[str, float]]:
        """After a restart, the latest slot within the grace window (a missed run runs once); while leading, every
        slot since the last look, so a tick delayed past a slot (a busy machine) fires it late instead of never."""
        fire = []
        for name, suite in self.suites.items():
            seen = self._seen.get(name, now - self.grace_s)
            slots = recent_slots(suite, seen, now) if name in self._leading else recent_slots(suite, seen, now, 1)
            fire += [(name, slot) for slot in reversed(slots)]
            if slots:
                self._seen[name] = slots[0]
            self._leading.add(name)
        return fire


class RedisLock:
    """Leadership for one scheduler at a time: a key with a TTL, renewed by its holder only."""

    def __init__(self, client, ttl_s: float = 15.0, key: str = keys.BEAT_LOCK) -> None:
        self.redis, self.ttl_ms, self.key = client, int(ttl_s * 1000), key
        self.token = uuid.uuid4().hex

    def hold(self) -> bool:
        """Take the lock if free, renew it if ours; True while this process leads."""
        import redis

        if self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(self.key)
                if pipe.get(self.key) != self.token.encode():
                    return False
                pipe.multi()
                pipe.pexpire(self.key, self.ttl_ms)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def release(self) -> None:
        import redis

        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(self.key)
                if pipe.get(self.key) == self.token.encode():
                    pipe.multi()
                    pipe.delete(self.key)
                    pipe.execute()
            except redis.WatchError:
                pass


class SlotClaims:
    """Per (suite, slot): a claim (taken once, ever), a running lease its runner renews, and a done mark.

    A slot claimed by a scheduler that died before it finished has a claim, no done mark and no live lease: the next
    leader takes the lease (once, NX) and runs it again under the same run id, so the run is not lost either.
    """

    def __init__(self, client, lease_s: float) -> None:
        self.redis, self.lease_ms = client, int(lease_s * 1000)

    def claim(self, suite_name: str, slot: float, run_id: str) -> bool:
        """True for exactly one caller per (suite, slot), however many schedulers, restarts or redeliveries."""
        if not self.redis.set(keys.eval_slot(slot_key(suite_name, slot)), run_id, nx=True, ex=keys.KEEP_SECONDS):
            return False
        self.redis.set(keys.eval_running(run_id), "1", px=self.lease_ms)
        return True

    def orphaned(self, suite_name: str, slot: float) -> str | None:
        """The run id of a claimed slot that is neither done nor running, taking over its lease; else None."""
        run_id = self.redis.get(keys.eval_slot(slot_key(suite_name, slot)))
        if run_id is None:
            return None
        run_id = run_id.decode()
        if self.redis.exists(keys.eval_done(run_id)):
            return None
        if not self.redis.set(keys.eval_running(run_id), "1", nx=True, px=self.lease_ms):
            return None
        return run_id

    def renew(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            self.redis.pexpire(keys.eval_running(run_id), self.lease_ms)

    def finish(self, run_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(keys.eval_done(run_id), "1", ex=keys.KEEP_SECONDS)
            pipe.delete(keys.eval_running(run_id))
            pipe.execute()
