"""Security checks that need no services: local paths confined to TIDE_LOCAL_ROOTS, and no pickle on the queue or
in storage. (Secrets kept out of logs, records and error files: tests/integration/test_faults.py greps a real run.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.paths import REPO
from tide.jobs.storage import StorageError, resolve
from tide.settings import Settings
from tide.workers.celery_app import make_app


def test_local_paths_outside_the_roots_are_refused(tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (outside / "secret.jsonl").write_text("{}\n")
    (root / "escape").symlink_to(outside)
    monkeypatch.setenv("TIDE_LOCAL_ROOTS", str(root))
    assert resolve(str(root / "in.jsonl")).uri == str(root / "in.jsonl")
    assert resolve(str(root / "new" / "out")).uri.endswith("out")  # outputs that do not exist yet
    for path in (outside / "secret.jsonl", root / ".." / "outside" / "secret.jsonl", root / "escape" / "secret.jsonl",
                 Path("/etc/passwd")):
        with pytest.raises(StorageError, match="outside the local directories this service may use"):
            resolve(str(path))
    assert resolve("s3://bucket/key").uri == "s3://bucket/key"
    monkeypatch.delenv("TIDE_LOCAL_ROOTS")
    assert resolve(str(outside / "secret.jsonl")).uri.endswith("secret.jsonl")  # the CLI, no roots: any path


def test_a_service_always_may_use_its_own_storage(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDE_LOCAL_ROOTS", "")
    Settings(_env_file=None, local_roots=str(tmp_path / "in"), storage=str(tmp_path / "data")).export_storage_env()
    import os

    assert os.environ["TIDE_LOCAL_ROOTS"] == f"{tmp_path / 'in'},{tmp_path / 'data'}"


def test_nothing_on_the_queue_or_in_storage_is_pickled():
    conf = make_app("redis://127.0.0.1:1/0").conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json" and conf.result_serializer == "json"
    pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|cloudpickle|dill|joblib|shelve)\b|\bpd\.read_pickle|"
                         r"\bnp\.load\(.*allow_pickle=True", re.M)
    offenders = [str(p.relative_to(REPO)) for folder in ("jobs", "workers", "tide")
                 for p in (REPO / folder).rglob("*.py")
                 if pattern.search(p.read_text())]
    assert offenders == []
