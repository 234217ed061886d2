"""Where deliveries wait for their next attempt, and where each owner's delivery log lives.

`RedisOutbox` (queued jobs, evals on workers) survives restarts: the finishing process only adds the delivery, and a
long-lived courier (`tide beat`) claims it when due. A claim moves the delivery's due time a lease ahead in one
transaction, so two couriers never attempt it at once and one that dies mid-attempt hands it on after the lease.
`MemoryOutbox` holds the same for `tide run` and `tide eval run` without Redis.
"""
from __future__ import annotations

import threading
from typing import Protocol

from tide.jobs import keys
from tide.jobs.webhooks.events import Delivery, DeliveryState, LogEntry


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
    """Keys (named in jobs/keys.py): pending ids by due time, each delivery (JSON), and per owner its deliveries
    by creation, its log (a list) and the URLs that answered 410 Gone (a set)."""

    def __init__(self, client) -> None:
        self.redis = client

    def add(self, delivery: Delivery) -> None:
        with self.redis.pipeline() as pipe:
            pipe.zadd(keys.deliveries_of(delivery.owner), {delivery.id: delivery.created_at})
            pipe.expire(keys.deliveries_of(delivery.owner), keys.KEEP_SECONDS)
            pipe.execute()
        self.save(delivery)

    def claim_due(self, now: float, lease_s: float, limit: int = 32) -> list[Delivery]:
        import redis

        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(keys.WEBHOOKS_DUE)
                ids = [i.decode() for i in pipe.zrangebyscore(keys.WEBHOOKS_DUE, "-inf", now, start=0, num=limit)]
                if not ids:
                    return []
                pipe.multi()
                pipe.zadd(keys.WEBHOOKS_DUE, {i: now + lease_s for i in ids})
                pipe.execute()
            except redis.WatchError:  # another courier claimed first; the next round sees what is left
                return []
        found = [self.get(i) for i in ids]
        return [d for d in found if d is not None]

    def save(self, delivery: Delivery) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(keys.delivery(delivery.id), delivery.model_dump_json(), ex=keys.KEEP_SECONDS)
            if delivery.state == DeliveryState.PENDING:
                pipe.zadd(keys.WEBHOOKS_DUE, {delivery.id: delivery.next_at})
            else:
                pipe.zrem(keys.WEBHOOKS_DUE, delivery.id)
            pipe.execute()

    def get(self, delivery_id: str) -> Delivery | None:
        raw = self.redis.get(keys.delivery(delivery_id))
        return None if raw is None else Delivery.model_validate_json(raw)

    def deliveries(self, owner: str) -> list[Delivery]:
        ids = [i.decode() for i in self.redis.zrange(keys.deliveries_of(owner), 0, -1)]
        raws = self.redis.mget([keys.delivery(i) for i in ids]) if ids else []
        return [Delivery.model_validate_json(raw) for raw in raws if raw is not None]

    def append_log(self, owner: str, entry: LogEntry) -> None:
        with self.redis.pipeline() as pipe:
            pipe.rpush(keys.delivery_log(owner), entry.model_dump_json())
            pipe.expire(keys.delivery_log(owner), keys.KEEP_SECONDS)
            pipe.execute()

    def log(self, owner: str) -> list[LogEntry]:
        return [LogEntry.model_validate_json(raw) for raw in self.redis.lrange(keys.delivery_log(owner), 0, -1)]

    def disable(self, owner: str, url: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.sadd(keys.gone_urls(owner), url)
            pipe.expire(keys.gone_urls(owner), keys.KEEP_SECONDS)
            pipe.execute()

    def is_disabled(self, owner: str, url: str) -> bool:
        return bool(self.redis.sismember(keys.gone_urls(owner), url))

    def next_due(self) -> float | None:
        first = self.redis.zrange(keys.WEBHOOKS_DUE, 0, 0, withscores=True)
        return first[0][1] if first else None


def outbox_for(store) -> Outbox | None:
    """The durable outbox beside a job store: Redis for a `RedisJobStore`, None for an in-memory store."""
    client = getattr(store, "redis", None)
    return RedisOutbox(client) if client is not None else None
