"""The Celery app: JSON only on the queue, and settings chosen for long, expensive shard tasks."""
from __future__ import annotations

from celery import Celery

SHARD_TASK = "tide.run_shard"
FINALIZE_TASK = "tide.finalize_job"
PLAN_TASK = "tide.plan_job"


def make_app(broker_url: str, soft_shutdown_s: float = 60.0) -> Celery:
    app = Celery("tide", broker=broker_url)
    app.conf.update(
        # Payloads are pydantic models dumped to JSON: nothing on the queue can execute code when loaded.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # Job state lives in our own Redis keys; Celery results would only duplicate it.
        task_ignore_result=True,
        # Ack a shard only after its part is committed, so a worker that dies mid-shard loses nothing: the
        # message goes back to the queue and another worker re-runs the shard (parts are overwritten, not added).
        task_acks_late=True,
        # ...and requeue (not fail) a shard whose worker died under it; a killed process's unacked shards come back
        # after visibility_timeout. The per-shard attempt counter in Redis caps re-runs, so a shard that crashes
        # its worker every time cannot loop forever.
        task_reject_on_worker_lost=True,
        # Each thread slot reserves one shard and no more: shards are minutes long, and a reserved shard is one
        # that an idle worker elsewhere cannot take. Prefetch across shards comes from the thread slots instead.
        worker_prefetch_multiplier=1,
        # With late acks the broker re-delivers an unacked shard after a lost connection; carrying on would run
        # it twice at once.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # SIGQUIT/second Ctrl+C: give in-flight shards a grace period, then stop them; being unacked, they are
        # requeued. (SIGTERM is a warm shutdown: in-flight shards finish, no new ones start.)
        worker_soft_shutdown_timeout=soft_shutdown_s,
        worker_enable_soft_shutdown_on_idle=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis re-delivers a reserved message that is not acked within this time. It must exceed the longest
            # a shard can be held (queued behind other shards in the engine, then run): far above minutes.
            "visibility_timeout": 12 * 3600,
            # Ten priority levels (Redis pops level 0 first), so job priorities 0-9 map one to one.
            "priority_steps": list(range(10)),
            "queue_order_strategy": "priority",
        },
        task_default_priority=5,
    )
    return app


def celery_priority(job_priority: int) -> int:
    """Job priority (0-9, higher first) -> Redis transport priority (0 is popped first)."""
    return 9 - job_priority
