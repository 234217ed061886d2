"""File and batch records in Redis, with per-owner listings for the API's cursor pagination.

Keys (named in jobs/keys.py): each file and batch record (JSON), the owner of any file, batch or job id, and per
owner and kind a sorted set of ids by creation time, newest last.
"""
from __future__ import annotations

import time
from typing import Literal

from tide.jobs import keys
from tide.jobs.catalog.records import BatchRecord, FileRecord

Kind = Literal["files", "batches", "jobs"]


class Catalog:
    def __init__(self, redis) -> None:
        self.redis = redis

    # ownership and listings
    def own(self, owner: str, kind: Kind, object_id: str, created_at: float) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(keys.owner(object_id), owner, ex=keys.KEEP_SECONDS)
            pipe.zadd(keys.owned(owner, kind), {object_id: created_at})
            pipe.execute()

    def owner_of(self, object_id: str) -> str | None:
        raw = self.redis.get(keys.owner(object_id))
        return None if raw is None else raw.decode()

    def page(self, owner: str, kind: Kind, after: str | None, limit: int, newest_first: bool = True) -> list[str]:
        """Up to `limit` ids after the cursor `after` (an id of the same listing), in the asked order."""
        key = keys.owned(owner, kind)
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
            pipe.delete(keys.owner(object_id))
            pipe.zrem(keys.owned(owner, kind), object_id)
            pipe.execute()

    # files
    def put_file(self, record: FileRecord) -> None:
        ttl = keys.KEEP_SECONDS if record.expires_at is None else max(1, int(record.expires_at - time.time()))
        self.redis.set(keys.file_record(record.id), record.model_dump_json(), ex=ttl)
        self.own(record.owner, "files", record.id, record.created_at)

    def get_file(self, file_id: str) -> FileRecord | None:
        raw = self.redis.get(keys.file_record(file_id))
        return None if raw is None else FileRecord.model_validate_json(raw)

    def delete_file(self, record: FileRecord) -> None:
        self.redis.delete(keys.file_record(record.id))
        self.disown(record.owner, "files", record.id)

    # batches
    def put_batch(self, record: BatchRecord, created_at: float) -> None:
        self.redis.set(keys.batch_record(record.id), record.model_dump_json(), ex=keys.KEEP_SECONDS)
        self.own(record.owner, "batches", record.id, created_at)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        raw = self.redis.get(keys.batch_record(batch_id))
        return None if raw is None else BatchRecord.model_validate_json(raw)

    def update_batch(self, record: BatchRecord) -> None:
        """Rewrite a batch record; callers only ever add the same deterministic file ids, so races are harmless."""
        self.redis.set(keys.batch_record(record.id), record.model_dump_json(), ex=keys.KEEP_SECONDS)
