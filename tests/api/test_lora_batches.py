"""OpenAI batch lines that name a LoRA adapter in `model` (`base:adapter`): the batch runs on the base model."""
from __future__ import annotations

import json

from fastapi.testclient import TestClient

from tests.helpers.api import KEY
from tide.jobs.rows import parse_json_line

AUTH = {"Authorization": f"Bearer {KEY}"}


def test_batch_of_adapter_lines_runs_on_the_base_model(api_app):
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": f"lora-base:{name}", "messages": [{"role": "user", "content": "hi"}]}}
             for i, name in enumerate(["support-v3", "legal"])]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with TestClient(api_app) as client:
        upload = client.post("/v1/files", headers=AUTH, data={"purpose": "batch"},
                             files={"file": ("adapters.jsonl", content)}).json()
        batch = client.post("/v1/batches", headers=AUTH, json={
            "input_file_id": upload["id"], "completion_window": "24h", "endpoint": "/v1/chat/completions"})
    assert batch.status_code == 200, batch.text
    assert batch.json()["model"] == "lora-base"
    rows = [parse_json_line(json.dumps(line).encode(), i, {}, "/v1/chat/completions") for i, line in enumerate(lines)]
    assert [row.params.lora for row in rows] == ["support-v3", "legal"]
