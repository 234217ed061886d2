"""A job run to its end in this process on a real engine, behind an engine service."""
from __future__ import annotations

from tide.jobs.embedded import run_embedded
from tide.jobs.specs import JobSpec
from tide.jobs.state import Job
from tide.workers.engine_service import EngineService


def run_on_engine(spec: JobSpec, engine) -> Job:
    """Run a job to its end in this process on `engine` (a real one), behind an engine service closed afterwards."""
    service = EngineService(engine, idle_wait_s=0.01)
    try:
        return run_embedded(spec, service, show_progress=False)
    finally:
        service.close()
