"""Session-wide real services for the integration tests (started by tide/workers/processes.py)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.services import BUCKET, SERVED, WEBHOOK_SECRET
from tide.workers.processes import service_env, start_moto, start_redis, start_worker, stop


@dataclass
class Services:
    redis_url: str
    s3_url: str
    env: dict[str, str]
    model_dir: Path
    logs: Path


@pytest.fixture(scope="session")
def services(tmp_path_factory, tiny_model_dir):
    logs = tmp_path_factory.mktemp("services")
    redis_proc, redis_url = start_redis(logs)
    moto_proc, s3_url = start_moto()
    env = service_env(redis_url, s3_url, TIDE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("AWS_", "TIDE_"))})
    from tide.jobs.storage import s3_client

    s3_client.cache_clear()  # this process talks to the moto server from now on
    s3_client().create_bucket(Bucket=BUCKET)
    try:
        yield Services(redis_url, s3_url, env, tiny_model_dir("llama"), logs)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        s3_client.cache_clear()
        stop(moto_proc)
        stop(redis_proc)


@pytest.fixture(scope="session")
def worker(services):
    """One `tide worker` serving the tiny model for the whole session."""
    process = start_worker(services.model_dir, SERVED, services.env, services.logs / "worker.log")
    yield process
    stop(process)
