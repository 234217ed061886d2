"""Every Redis key Tide writes, and the layout of the Celery queue lists it reads, in one place.

All of Tide's own keys start with `tide:`; the Celery queues of served models are lists named `tide.<model>`.
"""
from __future__ import annotations

KEEP_SECONDS = 30 * 86400  # how long a job, its records, leases' tasks, deliveries and eval marks stay in Redis

# Jobs (jobs/store.py): the job document, its shards, their progress and attempts, the shards left to finish.
JOBS_INDEX = "tide:jobs"  # sorted set: every job id by creation time
COUNTERS = "tide:counters"  # hash: service-wide `model|name` counters (jobs/metrics.py)


def job(job_id: str) -> str:
    """JSON of the job; with `:shards`, `:progress`, `:attempts` (hashes by shard index) and `:remaining`."""
    return f"tide:job:{job_id}"


def job_part(job_id: str, part: str) -> str:
    return f"{job(job_id)}:{part}"


def idempotency(key: str) -> str:
    return f"tide:idem:{key}"


# Leases (jobs/leases/book.py).
LEASES = "tide:leases"  # sorted set: member `job|index|token`, score = expiry
DEADLINES = "tide:deadlines"  # sorted set: job id -> expires_at, while the job runs


def shard_tasks(job_id: str) -> str:
    return job_part(job_id, "tasks")  # hash: shard index -> ShardTask JSON


def inflight(job_id: str) -> str:
    return job_part(job_id, "inflight")  # hash: `index|token` -> the row a careful re-run is on


# Files and batches of the API (jobs/catalog/store.py).
def file_record(file_id: str) -> str:
    return f"tide:file:{file_id}"


def batch_record(batch_id: str) -> str:
    return f"tide:batch:{batch_id}"


def owner(object_id: str) -> str:
    return f"tide:owner:{object_id}"


def owned(owner_name: str, kind: str) -> str:
    return f"tide:owned:{owner_name}:{kind}"  # sorted set: ids by creation time


# Webhook deliveries (jobs/webhooks/outbox.py).
WEBHOOKS_DUE = "tide:webhooks:due"  # sorted set: pending delivery ids by due time


def delivery(delivery_id: str) -> str:
    return f"tide:webhooks:d:{delivery_id}"


def deliveries_of(owner_name: str) -> str:
    return f"tide:webhooks:owner:{owner_name}"


def delivery_log(owner_name: str) -> str:
    return f"tide:webhooks:log:{owner_name}"


def gone_urls(owner_name: str) -> str:
    return f"tide:webhooks:gone:{owner_name}"


# The eval scheduler (jobs/evals/schedule.py).
BEAT_LOCK = "tide:beat:lock"


def eval_slot(slot: str) -> str:
    return f"tide:evals:slot:{slot}"


def eval_running(run_id: str) -> str:
    return f"tide:evals:running:{run_id}"


def eval_done(run_id: str) -> str:
    return f"tide:evals:done:{run_id}"


# Worker heartbeats (workers/registry.py).
WORKERS_PATTERN = "tide:worker:*"


def worker(name: str) -> str:
    return f"tide:worker:{name}"


# Celery's queues of served models (workers/dispatch.py sends to them, /metrics counts them).
QUEUE_PREFIX = "tide."
# kombu's Redis transport keeps one list per priority step: the queue name, this separator, then the step.
PRIORITY_SEPARATOR = b"\x06\x16"
QUEUE_LISTS_PATTERN = QUEUE_PREFIX.encode() + b"*"


def queue_of_list(key: bytes) -> str:
    """The queue a kombu priority list belongs to."""
    return key.split(PRIORITY_SEPARATOR)[0].decode()
