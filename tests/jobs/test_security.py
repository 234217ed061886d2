"""Security checks that need no services: local paths confined to the local roots, and no pickle on the queue or
in storage. (Secrets kept out of logs, records and error files: tests/integration/test_faults.py greps a real run.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.paths import REPO
from tide.jobs.storage import StorageConfig, StorageError, resolve
from tide.settings import Settings
from tide.workers.celery_app import make_app


def test_local_paths_outside_the_roots_are_refused(tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (outside / "secret.jsonl").write_text("{}\n")
    (root / "escape").symlink_to(outside)
    service = StorageConfig(local_roots=(str(root),))
    assert resolve(str(root / "in.jsonl"), service).uri == str(root / "in.jsonl")
    assert resolve(str(root / "new" / "out"), service).uri.endswith("out")  # outputs that do not exist yet
    for path in (outside / "secret.jsonl", root / ".." / "outside" / "secret.jsonl", root / "escape" / "secret.jsonl",
                 Path("/etc/passwd")):
        with pytest.raises(StorageError, match="outside the local directories this service may use"):
            resolve(str(path), service)
    assert resolve("s3://bucket/key", service).uri == "s3://bucket/key"
    # The command-line tools, no roots: any path, whatever the environment says (only the config counts).
    monkeypatch.setenv("TIDE_LOCAL_ROOTS", str(root))
    assert resolve(str(outside / "secret.jsonl"), StorageConfig()).uri.endswith("secret.jsonl")


def test_a_service_always_may_use_its_own_storage(tmp_path):
    settings = Settings(_env_file=None, local_roots=str(tmp_path / "in"), storage=str(tmp_path / "data"),
                        storage_retry_s=7)
    assert settings.storage_config() == StorageConfig(local_roots=(str(tmp_path / "in"), str(tmp_path / "data")),
                                                      retry_s=7)
    assert Settings(_env_file=None, storage=str(tmp_path / "data")).storage_config().local_roots == ()


def test_nothing_on_the_queue_or_in_storage_is_pickled():
    conf = make_app("redis://127.0.0.1:1/0").conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json" and conf.result_serializer == "json"
    pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|cloudpickle|dill|joblib|shelve)\b|\bpd\.read_pickle|"
                         r"\bnp\.load\(.*allow_pickle=True", re.M)
    offenders = [str(p.relative_to(REPO)) for folder in ("jobs", "workers", "tide")
                 for p in (REPO / folder).rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []
