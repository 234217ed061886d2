"""A job run to its end in this process, as `tide run` runs it: on an engine service, any local path allowed."""
from __future__ import annotations

from tide.jobs.embedded import run_embedded
from tide.jobs.specs import JobSpec
from tide.jobs.state import Job
from tide.jobs.storage import StorageConfig
from tide.jobs.webhooks.courier import WebhookConfig
from tide.workers.engine_service import EngineService

LOCAL = StorageConfig()  # what the command-line tools use: any local path


def run_local(spec: JobSpec, service, price_per_worker_hour: float = 0.0,
              webhooks: WebhookConfig | None = None, **options) -> Job:
    """`run_embedded` as `tide run` calls it, quietly."""
    return run_embedded(spec, service, storage=LOCAL, webhooks=webhooks or WebhookConfig(),
                        price_per_worker_hour=price_per_worker_hour, show_progress=False, **options)


def run_on_engine(spec: JobSpec, engine) -> Job:
    """Run a job to its end in this process on `engine` (a real one), behind an engine service closed afterwards."""
    service = EngineService(engine, idle_wait_s=0.01)
    try:
        return run_local(spec, service)
    finally:
        service.close()
