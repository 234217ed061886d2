"""The lease book in Redis: who holds which shard until when, the shard tasks to send again, job deadlines.

Keys (named in jobs/keys.py): the leases (member `job|index|token`, score = expiry), the running jobs' deadlines,
each job's shard tasks and the row each careful re-run is on.

A lease is taken back by exactly one reaper: the one whose ZREM removes it.
"""
from __future__ import annotations

from dataclasses import dataclass

from tide.jobs import keys
from tide.jobs.specs import ShardTask


@dataclass(frozen=True)
class Lease:
    """One claim of one shard; `token` is the claim's attempt number, the fencing token."""

    job_id: str
    index: int
    token: int

    @property
    def member(self) -> str:
        return f"{self.job_id}|{self.index}|{self.token}"

    @classmethod
    def parse(cls, member: bytes | str) -> "Lease":
        text = member.decode() if isinstance(member, bytes) else member
        job_id, index, token = text.rsplit("|", 2)
        return cls(job_id, int(index), int(token))


def queue_renewals(pipe, leases: list[Lease], until: float) -> None:
    """Queue one round's renewals on a pipeline (sync or asyncio: the fleet benchmark sends the same commands)."""
    for lease in leases:
        pipe.zadd(keys.LEASES, {lease.member: until}, xx=True)  # only a lease still in the book
        pipe.zscore(keys.LEASES, lease.member)


def renewed(answers: list) -> list[bool]:
    """Per lease of `queue_renewals`, whether the book still held it."""
    return [score is not None for score in answers[1::2]]


class LeaseBook:
    def __init__(self, client, ttl_s: float = 30.0) -> None:
        self.redis, self.ttl_s = client, ttl_s

    # Leases.
    def grant(self, lease: Lease, now: float) -> None:
        self.redis.zadd(keys.LEASES, {lease.member: now + self.ttl_s})

    def renew(self, leases: list[Lease], now: float) -> list[bool]:
        """Push each lease's expiry out; False for a lease no longer in the book (a reaper took it back)."""
        if not leases:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            queue_renewals(pipe, leases, now + self.ttl_s)
            return renewed(pipe.execute())

    def held(self, lease: Lease, now: float) -> bool:
        score = self.redis.zscore(keys.LEASES, lease.member)
        return score is not None and score > now

    def release(self, lease: Lease) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.LEASES, lease.member)
            pipe.hdel(keys.inflight(lease.job_id), f"{lease.index}|{lease.token}")
            pipe.execute()

    def lapsed(self, now: float, limit: int = 100) -> list[Lease]:
        return [Lease.parse(m) for m in self.redis.zrangebyscore(keys.LEASES, "-inf", now, start=0, num=limit)]

    def take(self, lease: Lease) -> bool:
        """Remove a lapsed lease; True for exactly one caller."""
        return bool(self.redis.zrem(keys.LEASES, lease.member))

    # The row a careful re-run has in the engine (to name the row that kills workers).
    def mark_inflight(self, lease: Lease, row: int) -> None:
        self.redis.hset(keys.inflight(lease.job_id), f"{lease.index}|{lease.token}", row)

    def inflight(self, lease: Lease) -> int | None:
        raw = self.redis.hget(keys.inflight(lease.job_id), f"{lease.index}|{lease.token}")
        return None if raw is None else int(raw)

    # Shard tasks, kept so a reaper can send a shard again.
    def put_tasks(self, job_id: str, tasks: list[ShardTask]) -> None:
        key = keys.shard_tasks(job_id)
        with self.redis.pipeline() as pipe:
            for start in range(0, len(tasks), 500):
                pipe.hset(key, mapping={str(t.shard.index): t.model_dump_json() for t in tasks[start:start + 500]})
            pipe.expire(key, keys.KEEP_SECONDS)
            pipe.execute()

    def get_task(self, job_id: str, index: int) -> ShardTask | None:
        raw = self.redis.hget(keys.shard_tasks(job_id), str(index))
        return None if raw is None else ShardTask.model_validate_json(raw)

    # Deadlines of running jobs, so expiry does not wait for a worker to touch the job.
    def watch_deadline(self, job_id: str, at: float) -> None:
        self.redis.zadd(keys.DEADLINES, {job_id: at})

    def due_deadlines(self, now: float, limit: int = 100) -> list[str]:
        return [m.decode() for m in self.redis.zrangebyscore(keys.DEADLINES, "-inf", now, start=0, num=limit)]

    def drop_deadline(self, job_id: str) -> None:
        self.redis.zrem(keys.DEADLINES, job_id)


def leases_for(store, ttl_s: float = 30.0) -> LeaseBook | None:
    """The lease book beside a job store: Redis for a `RedisJobStore`, None for the in-memory store of `tide run`."""
    client = getattr(store, "redis", None)
    return LeaseBook(client, ttl_s) if client is not None else None
