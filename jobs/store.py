"""Job state behind one small interface: `RedisJobStore` for queued jobs, `MemoryJobStore` for `tide run`.

Each write is atomic: a job or shard document changes through a compare-and-set `change(old) -> new | None`, and
finishing a shard both records its final state and decrements the job's remaining-shards counter in one transaction,
so exactly one caller sees the count reach zero (and enqueues finalization), however often a shard is re-run.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from tide.jobs import keys
from tide.jobs.state import Job, ShardProgress, ShardState

JobChange = Callable[[Job], "Job | None"]
ShardChange = Callable[[ShardState], "ShardState | None"]


class JobNotFound(KeyError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no job {self.job_id!r}"


class StoreUnavailable(RuntimeError):
    """The state store (Redis) cannot be reached."""


class JobStore(Protocol):
    def claim_idempotency(self, key: str, job_id: str) -> str: ...  # -> the job id that owns the key
    def put_job(self, job: Job) -> None: ...
    def get_job(self, job_id: str) -> Job: ...
    def update_job(self, job_id: str, change: JobChange) -> Job: ...
    def put_shards(self, job_id: str, shards: list[ShardState]) -> None: ...
    def get_shards(self, job_id: str) -> list[ShardState]: ...  # live progress merged in
    def update_shard(self, job_id: str, index: int, change: ShardChange) -> ShardState: ...
    def finish_shard(self, job_id: str, index: int, change: ShardChange) -> int | None: ...
    def set_progress(self, job_id: str, index: int, progress: ShardProgress) -> None: ...
    def incr_attempts(self, job_id: str, index: int) -> int: ...
    def add_counters(self, counters: dict[str, float]) -> None: ...  # service-wide figures (jobs/metrics.py)
    def counters(self) -> dict[str, float]: ...


class MemoryJobStore:
    """In-process store for the embedded `tide run` pipeline: the same semantics as Redis under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, str] = {}
        self._shards: dict[str, dict[int, str]] = {}
        self._progress: dict[str, dict[int, str]] = {}
        self._remaining: dict[str, int] = {}
        self._attempts: dict[tuple[str, int], int] = {}
        self._idempotency: dict[str, str] = {}
        self._counters: dict[str, float] = {}

    def claim_idempotency(self, key: str, job_id: str) -> str:
        with self._lock:
            return self._idempotency.setdefault(key, job_id)

    def put_job(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job.model_dump_json()

    def get_job(self, job_id: str) -> Job:
        with self._lock:
            return Job.model_validate_json(self._job_json(job_id))

    def update_job(self, job_id: str, change: JobChange) -> Job:
        with self._lock:
            job = Job.model_validate_json(self._job_json(job_id))
            new = change(job)
            if new is None:
                return job
            self._jobs[job_id] = new.model_dump_json()
            return new

    def put_shards(self, job_id: str, shards: list[ShardState]) -> None:
        with self._lock:
            self._shards[job_id] = {s.index: s.model_dump_json() for s in shards}
            self._remaining[job_id] = sum(not s.status.terminal for s in shards)

    def get_shards(self, job_id: str) -> list[ShardState]:
        with self._lock:
            shards = self._shards.get(job_id, {})
            progress = self._progress.get(job_id, {})
            return [_with_progress(ShardState.model_validate_json(shards[i]), progress.get(i))
                    for i in sorted(shards)]

    def update_shard(self, job_id: str, index: int, change: ShardChange) -> ShardState:
        with self._lock:
            shard = ShardState.model_validate_json(self._shards[job_id][index])
            new = change(shard)
            if new is None:
                return shard
            self._shards[job_id][index] = new.model_dump_json()
            return new

    def finish_shard(self, job_id: str, index: int, change: ShardChange) -> int | None:
        with self._lock:
            shard = ShardState.model_validate_json(self._shards[job_id][index])
            new = None if shard.status.terminal else change(shard)
            if new is None:
                return None
            assert new.status.terminal
            self._shards[job_id][index] = new.model_dump_json()
            self._remaining[job_id] -= 1
            return self._remaining[job_id]

    def set_progress(self, job_id: str, index: int, progress: ShardProgress) -> None:
        with self._lock:
            self._progress.setdefault(job_id, {})[index] = progress.model_dump_json()

    def incr_attempts(self, job_id: str, index: int) -> int:
        with self._lock:
            self._attempts[job_id, index] = self._attempts.get((job_id, index), 0) + 1
            return self._attempts[job_id, index]

    def add_counters(self, counters: dict[str, float]) -> None:
        with self._lock:
            for name, value in counters.items():
                self._counters[name] = self._counters.get(name, 0) + value

    def counters(self) -> dict[str, float]:
        with self._lock:
            return dict(self._counters)

    def _job_json(self, job_id: str) -> str:
        if job_id not in self._jobs:
            raise JobNotFound(job_id)
        return self._jobs[job_id]


class RedisJobStore:
    """Job state in Redis, under the keys `jobs/keys.py` names (the job, its shards, progress, attempts, the
    shards remaining, idempotency keys)."""

    def __init__(self, client) -> None:
        self.redis = client

    @classmethod
    def from_url(cls, url: str) -> "RedisJobStore":
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"cannot reach Redis at {url}: {exc}; start redis-server or set TIDE_REDIS_URL") \
                from exc
        return cls(client)

    def claim_idempotency(self, key: str, job_id: str) -> str:
        name = keys.idempotency(key)
        if self.redis.set(name, job_id, nx=True, ex=keys.KEEP_SECONDS):
            return job_id
        return self.redis.get(name).decode()

    def put_job(self, job: Job) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(keys.job(job.id), job.model_dump_json(), ex=keys.KEEP_SECONDS)
            pipe.zadd(keys.JOBS_INDEX, {job.id: job.created_at})
            pipe.execute()

    def recent_jobs(self, limit: int = 10_000) -> list[Job]:
        """The newest jobs (for service-wide figures), newest first."""
        ids = [i.decode() for i in self.redis.zrevrange(keys.JOBS_INDEX, 0, limit - 1)]
        raws = self.redis.mget([keys.job(i) for i in ids]) if ids else []
        return [Job.model_validate_json(raw) for raw in raws if raw is not None]

    def add_counters(self, counters: dict[str, float]) -> None:
        if counters:
            with self.redis.pipeline() as pipe:
                for name, value in counters.items():
                    pipe.hincrbyfloat(keys.COUNTERS, name, value)
                pipe.execute()

    def counters(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.redis.hgetall(keys.COUNTERS).items()}

    def get_job(self, job_id: str) -> Job:
        raw = self.redis.get(keys.job(job_id))
        if raw is None:
            raise JobNotFound(job_id)
        return Job.model_validate_json(raw)

    def update_job(self, job_id: str, change: JobChange) -> Job:
        import redis

        key = keys.job(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise JobNotFound(job_id)
                    job = Job.model_validate_json(raw)
                    new = change(job)
                    if new is None:
                        pipe.unwatch()
                        return job
                    pipe.multi()
                    pipe.set(key, new.model_dump_json(), ex=keys.KEEP_SECONDS)
                    pipe.execute()
                    return new
                except redis.WatchError:  # another writer got there first: re-read and re-apply
                    continue

    def put_shards(self, job_id: str, shards: list[ShardState]) -> None:
        shards_key = keys.job_part(job_id, "shards")
        with self.redis.pipeline() as pipe:
            pipe.delete(shards_key)
            if shards:
                pipe.hset(shards_key, mapping={str(s.index): s.model_dump_json() for s in shards})
            pipe.set(keys.job_part(job_id, "remaining"), sum(not s.status.terminal for s in shards),
                     ex=keys.KEEP_SECONDS)
            for part in ("shards", "progress", "attempts"):
                pipe.expire(keys.job_part(job_id, part), keys.KEEP_SECONDS)
            pipe.execute()

    def get_shards(self, job_id: str) -> list[ShardState]:
        with self.redis.pipeline() as pipe:
            pipe.hgetall(keys.job_part(job_id, "shards"))
            pipe.hgetall(keys.job_part(job_id, "progress"))
            shards, progress = pipe.execute()
        return sorted((_with_progress(ShardState.model_validate_json(raw), progress.get(i))
                       for i, raw in shards.items()), key=lambda s: s.index)

    def update_shard(self, job_id: str, index: int, change: ShardChange) -> ShardState:
        return self._change_shard(job_id, index, change, finishing=False)[0]

    def finish_shard(self, job_id: str, index: int, change: ShardChange) -> int | None:
        return self._change_shard(job_id, index, change, finishing=True)[1]

    def set_progress(self, job_id: str, index: int, progress: ShardProgress) -> None:
        self.redis.hset(keys.job_part(job_id, "progress"), str(index), progress.model_dump_json())

    def incr_attempts(self, job_id: str, index: int) -> int:
        return int(self.redis.hincrby(keys.job_part(job_id, "attempts"), str(index), 1))

    def _change_shard(self, job_id: str, index: int, change: ShardChange,
                      finishing: bool) -> tuple[ShardState, int | None]:
        import redis

        key = keys.job_part(job_id, "shards")
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.hget(key, str(index))
                    if raw is None:
                        raise JobNotFound(job_id)
                    shard = ShardState.model_validate_json(raw)
                    new = None if finishing and shard.status.terminal else change(shard)
                    if new is None:
                        pipe.unwatch()
                        return shard, None
                    pipe.multi()
                    pipe.hset(key, str(index), new.model_dump_json())
                    if finishing:
                        assert new.status.terminal
                        pipe.decr(keys.job_part(job_id, "remaining"))
                    results = pipe.execute()
                    return new, (int(results[1]) if finishing else None)
                except redis.WatchError:  # another writer got there first: re-read and re-apply
                    continue


def _with_progress(shard: ShardState, progress: bytes | str | None) -> ShardState:
    """Running shards show their live progress; terminal ones already hold their final counts."""
    if progress is None or shard.status.terminal:
        return shard
    return shard.model_copy(update={"progress": ShardProgress.model_validate_json(progress)})
