"""Fixtures for job-side unit tests: a stand-in engine service and an in-process pipeline around it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tide.jobs.embedded import run_embedded
from tide.jobs.specs import JobSpec
from tide.jobs.state import Job
from tests.jobs.fake_engine import FakeEngine
from tide.workers.engine_service import EngineService


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def service(fake_engine: FakeEngine):
    svc = EngineService(fake_engine, idle_wait_s=0.01)
    yield svc
    svc.close()


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows may be dicts (dumped as JSON) or raw strings (written as they are, to make bad lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def run_on_engine(spec: JobSpec, engine) -> Job:
    """Run a job to its end in this process on `engine` (a real one), behind an engine service closed afterwards."""
    service = EngineService(engine, idle_wait_s=0.01)
    try:
        return run_embedded(spec, service, show_progress=False)
    finally:
        service.close()
