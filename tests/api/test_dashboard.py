"""The dashboard's data behind the keys: the caller's jobs with progress, the depth of its models' queues, workers
from heartbeats, and the last score and trend of the eval suites its policy shows; nothing of another key's (the
page itself is driven in a real browser in tests/integration/)."""
from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from tests.helpers.api import KEY, OTHER_KEY
from tide.jobs import keys
from tide.jobs.state import EngineFigures
from tide.key_policies import KeyPolicy
from tide.workers.registry import WorkerInfo

AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}


@pytest.fixture
def client(api_app):
    with TestClient(api_app) as client:
        yield client


def test_the_page_is_served_without_data_and_the_data_wants_a_key(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/dashboard" in page.text and "Authorization" in page.text
    assert client.get("/v1/dashboard").status_code == 401
    assert client.get("/v1/dashboard", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_dashboard_lists_the_callers_jobs_workers_and_evals(client, api_app, tmp_path):
    upload = client.post("/v1/files", headers=AUTH, data={"purpose": "batch"},
                         files={"file": ("in.jsonl", b'{"prompt": "hi"}\n{"prompt": "there"}\n')})
    job = client.post("/v1/jobs", headers=AUTH, json={"input": upload.json()["id"], "model": "dash-model"}).json()
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "dash-model", "messages": [{"role": "user", "content": "hi"}]}}
    batch_file = client.post("/v1/files", headers=AUTH, data={"purpose": "batch"},
                             files={"file": ("b.jsonl", (json.dumps(line) + "\n").encode())}).json()
    batch = client.post("/v1/batches", headers=AUTH, json={"input_file_id": batch_file["id"],
                                                           "completion_window": "24h",
                                                           "endpoint": "/v1/chat/completions"}).json()
    other_file = client.post("/v1/files", headers=OTHER, data={"purpose": "batch"},
                             files={"file": ("o.jsonl", b'{"prompt": "secret"}\n')}).json()
    other_job = client.post("/v1/jobs", headers=OTHER, json={"input": other_file["id"],
                                                             "model": "other-teams-model"}).json()
    svc = api_app.state.services
    beat = time.time()
    info = WorkerInfo(name="w-dash", model="dash-model", host="h", pid=1, concurrency=2, started_at=beat - 60,
                      last_heartbeat=beat, engine=EngineFigures(mean_batch_occupancy=0.5, busy_time_s=10.0,
                                                                generation_tokens=400))
    svc.store.redis.set(keys.worker(info.name), info.model_dump_json(), ex=30)
    history = tmp_path / "history" / "smoke"
    history.mkdir(parents=True)
    (history / "index.json").write_text(json.dumps([
        {"run_id": f"r{i}", "finished_at": "2026-01-01T00:00:00Z", "score": s, "status": "passed"}
        for i, s in enumerate([0.5, 0.75, 1.0])]))
    suites = tmp_path / "suites.yaml"
    suites.write_text("suites:\n  smoke:\n    model: m\n    dataset: d.jsonl\n    history: history/\n")
    saved = svc.settings
    svc.settings = saved.model_copy(update={"evals_config": str(suites), "api_key_policies": {
        **saved.api_key_policies, KEY: KeyPolicy(evals=["smoke"])}})
    try:
        data = client.get("/v1/dashboard", headers=AUTH).json()
        others = client.get("/v1/dashboard", headers=OTHER).json()
    finally:
        svc.settings = saved
        svc.store.redis.delete(keys.worker(info.name))
    mine = [j for j in data["jobs"] if j["id"] == job["id"]]
    assert mine and mine[0]["progress"]["total"] in (0, 2) and mine[0]["model"] == "dash-model"
    assert [j["kind"] for j in data["jobs"] if j["id"] == batch["id"]] == ["batch"]
    assert "tide.dash-model" in data["queues"]  # its plan tasks wait there: no worker serves it
    assert "tide.other-teams-model" not in data["queues"]  # another key's model is none of this key's business
    worker = next(w for w in data["workers"] if w["name"] == "w-dash")
    assert worker["batch_occupancy"] == 0.5 and worker["tokens_per_s"] == pytest.approx(40.0)
    assert data["evals"] == [{"suite": "smoke", "model": "m", "runs": 3, "last_score": 1.0, "last_status": "passed",
                              "last_finished_at": "2026-01-01T00:00:00Z", "trend": [0.5, 0.75, 1.0]}]
    assert mine[0]["report"] is False  # no summary until it ends: its report is not there yet
    assert client.get(f"/v1/jobs/{job['id']}/report", headers=AUTH).status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/report").status_code == 401
    assert client.get("/v1/dashboard", headers={"Authorization": "Bearer nobody"}).status_code == 401
    assert [j["id"] for j in others["jobs"]] == [other_job["id"]]
    assert other_job["id"] not in {j["id"] for j in data["jobs"]}
    assert set(others["queues"]) == {"tide.other-teams-model"} and others["evals"] == []
