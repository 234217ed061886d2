"""File and batch records in Redis, with per-owner listings for the API's cursor pagination.

Keys: tide:file:{id} and tide:batch:{id} (JSON), tide:owner:{id} (the owner of any file, batch or job id), and
tide:owned:{owner}:{kind} (a sorted set of ids by creation time, newest last).
"""
from __future__ import annotations

import time
from typing import Literal

from tide.jobs.catalog.records import BatchRecord, FileRecord

Kind = Literal["files", "batches", "jobs"]
KEEP_SECONDS = 30 * 86400  # as long as jobs are kept


class Catalog:
    def __init__(self, redis) -> None:
        self.redis = redis

    # ownership and listings
    def own(self, owner: str, kind: Kind, object_id: str, created_at: float) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(f"tide:owner:{object_id}", owner, ex=KEEP_SECONDS)
            pipe.zadd(f"tide:owned:{owner}:{kind}", {object_id: created_at})
            pipe.execute()

    def owner_of(self, object_id: str) -> str | None:
        raw = self.redis.get(f"tide:owner:{object_id}")
        return None if raw is None else raw.decode()

    def page(self, owner: str, kind: Kind, after: str | None, limit: int, newest_first: bool = True) -> list[str]:
        """Up to `limit` ids after the cursor `after` (an id of the same listing), in the asked order."""
        key = f"tide:owned:{owner}:{kind}"
        start = 0
        if after is not None:
            rank = self.redis.zrevrank(key, after) if newest_first else self.redis.zrank(key, after)
            if rank is None:
                return []
            start = rank + 1
        items = (self.redis.zrevrange if newest_first else self.redis.zrange)(key, start, start + limit - 1)
        return [item.decode() for item in items]

    def disown(self, owner: str, kind: Kind, object_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(f"tide:owner:{object_id}")
            pipe.zrem(f"tide:owned:{owner}:{kind}", object_id)
            pipe.execute()

    # files
    def put_file(self, record: FileRecord) -> None:
        ttl = KEEP_SECONDS if record.expires_at is None else max(1, int(record.expires_at - time.time()))
        self.redis.set(f"tide:file:{record.id}", record.model_dump_json(), ex=ttl)
        self.own(record.owner, "files", record.id, record.created_at)

    def get_file(self, file_id: str) -> FileRecord | None:
        raw = self.redis.get(f"tide:file:{file_id}")
        return None if raw is None else FileRecord.model_validate_json(raw)

    def delete_file(self, record: FileRecord) -> None:
        self.redis.delete(f"tide:file:{record.id}")
        self.disown(record.owner, "files", record.id)

    # batches
    def put_batch(self, record: BatchRecord, created_at: float) -> None:
        self.redis.set(f"tide:batch:{record.id}", record.model_dump_json(), ex=KEEP_SECONDS)
        self.own(record.owner, "batches", record.id, created_at)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        raw = self.redis.get(f"tide:batch:{batch_id}")
        return None if raw is None else BatchRecord.model_validate_json(raw)

    def update_batch(self, record: BatchRecord) -> None:
        """Rewrite a batch record; callers only ever add the same deterministic file ids, so races are harmless."""
        self.redis.set(f"tide:batch:{record.id}", record.model_dump_json(), ex=KEEP_SECONDS)
