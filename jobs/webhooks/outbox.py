"""Where deliveries wait for their next attempt, and where each owner's delivery log lives.

`RedisOutbox` (queued jobs, evals on workers) survives restarts: the finishing process only adds the delivery, and a
long-lived courier (`tide beat`) claims it when due. A claim moves the delivery's due time a lease ahead in one
transaction, so two couriers never attempt it at once and one that dies mid-attempt hands it on after the lease.
`MemoryOutbox` holds the same for `tide run` and `tide eval run` without Redis.
"""
from __future__ import annotations

import threading
from typing import Protocol

from tide.jobs.webhooks.events import Delivery, DeliveryState, LogEntry

KEEP_SECONDS = 30 * 86400
DUE_KEY = "tide:webhooks:due"


class Outbox(Protocol):
    def add(self, delivery: Delivery) -> None: ...
    def claim_due(self, now: float, lease_s: float, limit: int = 32) -> list[Delivery]: ...
    def save(self, delivery: Delivery) -> None: ...  # pending ones are due again at next_at
    def get(self, delivery_id: str) -> Delivery | None: ...
    def deliveries(self, owner: str) -> list[Delivery]: ...
    def append_log(self, owner: str, entry: LogEntry) -> None: ...
    def log(self, owner: str) -> list[LogEntry]: ...
    def disable(self, owner: str, url: str) -> None: ...
    def is_disabled(self, owner: str, url: str) -> bool: ...
    def next_due(self) -> float | None: ...  # the earliest due time of a pending delivery


class MemoryOutbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliveries: dict[str, Delivery] = {}
        self._due: dict[str, float] = {}
        self._logs: dict[str, list[LogEntry]] = {}
        self._gone: set[tuple[str, str]] = set()

    def add(self, delivery: Delivery) -> None:
        self.save(delivery)

    def claim_due(self, now: float, lease_s: float, limit: int = 32) -> list[Delivery]:
        with self._lock:
            ids = sorted((at, i) for i, at in self._due.items() if at <= now)[:limit]
            for _, i in ids:
                self._due[i] = now + lease_s
            return [self._deliveries[i] for _, i in ids]

    def save(self, delivery: Delivery) -> None:
        with self._lock:
            self._deliveries[delivery.id] = delivery
            if delivery.state == DeliveryState.PENDING:
                self._due[delivery.id] = delivery.next_at
            else:
                self._due.pop(delivery.id, None)

    def get(self, delivery_id: str) -> Delivery | None:
        with self._lock:
            return self._deliveries.get(delivery_id)

    def deliveries(self, owner: str) -> list[Delivery]:
        with self._lock:
            return sorted((d for d in self._deliveries.values() if d.owner == owner), key=lambda d: d.created_at)

    def append_log(self, owner: str, entry: LogEntry) -> None:
        with self._lock:
            self._logs.setdefault(owner, []).append(entry)

    def log(self, owner: str) -> list[LogEntry]:
        with self._lock:
            return list(self._logs.get(owner, []))

    def disable(self, owner: str, url: str) -> None:
        with self._lock:
            self._gone.add((owner, url))

    def is_disabled(self, owner: str, url: str) -> bool:
        with self._lock:
            return (owner, url) in self._gone

    def next_due(self) -> float | None:
        with self._lock:
            return min(self._due.values(), default=None)


class RedisOutbox:
    """Keys: tide:webhooks:due (zset of pending ids by due time), tide:webhooks:d:{id} (JSON),
    tide:webhooks:owner:{owner} (zset of ids by creation), :log:{owner} (list), :gone:{owner} (set of URLs)."""

    def __init__(self, client) -> None:
        self.redis = client

    def add(self, delivery: Delivery) -> None:
        with self.redis.pipeline() as pipe:
            pipe.zadd(_owner_key(delivery.owner), {delivery.id: delivery.created_at})
            pipe.expire(_owner_key(delivery.owner), KEEP_SECONDS)
            pipe.execute()
        self.save(delivery)

    def claim_due(self, now: float, lease_s: float, limit: int = 32) -> list[Delivery]:
        import redis

        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(DUE_KEY)
                ids = [i.decode() for i in pipe.zrangebyscore(DUE_KEY, "-inf", now, start=0, num=limit)]
                if not ids:
                    return []
                pipe.multi()
                pipe.zadd(DUE_KEY, {i: now + lease_s for i in ids})
                pipe.execute()
            except redis.WatchError:  # another courier claimed first; the next round sees what is left
                return []
        found = [self.get(i) for i in ids]
        return [d for d in found if d is not None]

    def save(self, delivery: Delivery) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(_delivery_key(delivery.id), delivery.model_dump_json(), ex=KEEP_SECONDS)
            if delivery.state == DeliveryState.PENDING:
                pipe.zadd(DUE_KEY, {delivery.id: delivery.next_at})
            else:
                pipe.zrem(DUE_KEY, delivery.id)
            pipe.execute()

    def get(self, delivery_id: str) -> Delivery | None:
        raw = self.redis.get(_delivery_key(delivery_id))
        return None if raw is None else Delivery.model_validate_json(raw)

    def deliveries(self, owner: str) -> list[Delivery]:
        ids = [i.decode() for i in self.redis.zrange(_owner_key(owner), 0, -1)]
        raws = self.redis.mget([_delivery_key(i) for i in ids]) if ids else []
        return [Delivery.model_validate_json(raw) for raw in raws if raw is not None]

    def append_log(self, owner: str, entry: LogEntry) -> None:
        with self.redis.pipeline() as pipe:
            pipe.rpush(f"tide:webhooks:log:{owner}", entry.model_dump_json())
            pipe.expire(f"tide:webhooks:log:{owner}", KEEP_SECONDS)
            pipe.execute()

    def log(self, owner: str) -> list[LogEntry]:
        return [LogEntry.model_validate_json(raw) for raw in self.redis.lrange(f"tide:webhooks:log:{owner}", 0, -1)]

    def disable(self, owner: str, url: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.sadd(f"tide:webhooks:gone:{owner}", url)
            pipe.expire(f"tide:webhooks:gone:{owner}", KEEP_SECONDS)
            pipe.execute()

    def is_disabled(self, owner: str, url: str) -> bool:
        return bool(self.redis.sismember(f"tide:webhooks:gone:{owner}", url))

    def next_due(self) -> float | None:
        first = self.redis.zrange(DUE_KEY, 0, 0, withscores=True)
        return first[0][1] if first else None


def _delivery_key(delivery_id: str) -> str:
    return f"tide:webhooks:d:{delivery_id}"


def _owner_key(owner: str) -> str:
    return f"tide:webhooks:owner:{owner}"


def outbox_for(store) -> Outbox | None:
    """The durable outbox beside a job store: Redis for a `RedisJobStore`, None for an in-memory store."""
    client = getattr(store, "redis", None)
    return RedisOutbox(client) if client is not None else None
