"""An embeddings batch as a newcomer runs one: `tide stack up` serving all-MiniLM-L6-v2 (real redis-server, API and
worker processes), the official `openai` client uploading `/v1/embeddings` lines and reading OpenAI's output shape."""
from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.helpers.embeddings import MODEL, cosines, embedding_lines, multilingual_texts, reference
from tests.helpers.stack import running_stack
from tide.engine.loader import resolve_model

KEY = "tide-dev-key"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    env = {**os.environ, "TIDE_API_KEYS": KEY, "TIDE_SHARD_ROWS": "16"}
    with running_stack(tmp_path_factory.mktemp("stack"), env, resolve_model(MODEL), MODEL,
                       worker_args="--dtype float32") as stack:
        yield openai.OpenAI(base_url=stack.exports["TIDE_API_URL"], api_key=KEY, max_retries=0)


def _wait(client: openai.OpenAI, batch_id: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while (batch := client.batches.retrieve(batch_id)).status not in TERMINAL:
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.3)
    return batch


def _create(client: openai.OpenAI, tmp_path: Path, lines: list[dict], endpoint: str):
    path = tmp_path / "batch.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with open(path, "rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")


def test_an_embeddings_batch_runs_through_the_openai_client(client, tmp_path):
    texts = multilingual_texts(40, seed=7, long_share=0.2)
    lines = embedding_lines(texts) + [
        {"custom_id": "b64", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": MODEL, "input": texts[:3], "encoding_format": "base64", "user": "someone"}},
        {"custom_id": "strict", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": MODEL, "input": "word " * 400, "truncate": False}},
    ]
    batch = _wait(client, _create(client, tmp_path, lines, "/v1/embeddings").id)

    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (42, 41, 1)
    output = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    errors = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in output) == sorted([f"emb-{i}" for i in range(40)] + ["b64"])
    assert {x["custom_id"]: x["response"]["body"]["error"]["code"] for x in errors} == {
        "strict": "context_length_exceeded"}
    assert "402 tokens" in errors[0]["response"]["body"]["error"]["message"]

    bodies = {x["custom_id"]: x["response"]["body"] for x in output}
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in output)
    first = bodies["emb-0"]
    assert first["object"] == "list" and first["model"] == MODEL
    assert first["data"][0]["object"] == "embedding" and first["data"][0]["index"] == 0
    assert first["usage"]["prompt_tokens"] == first["usage"]["total_tokens"] > 0
    vectors = np.array([bodies[f"emb-{i}"]["data"][0]["embedding"] for i in range(40)], np.float32)
    expected = reference(resolve_model(MODEL), texts)
    assert cosines(vectors, expected).min() >= 0.9999
    packed = bodies["b64"]["data"]
    assert [d["index"] for d in packed] == [0, 1, 2]
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in packed])
    assert cosines(decoded, expected[:3]).min() >= 0.9999


def test_a_chat_line_fails_an_embeddings_batch_and_a_chat_batch_fails_on_an_embedding_model(client, tmp_path):
    chat = {"custom_id": "chat", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}}
    mixed = _wait(client, _create(client, tmp_path, [*embedding_lines(["a text"]), chat], "/v1/embeddings").id)
    assert mixed.status == "failed" and [(e.line, e.code) for e in mixed.errors.data] == [(2, "mismatched_url")]
    generate = _wait(client, _create(client, tmp_path, [chat], "/v1/chat/completions").id)
    assert generate.status == "completed" and generate.request_counts.failed == 1
    (error,) = [json.loads(x) for x in client.files.content(generate.error_file_id).text.splitlines()]
    message = (error["response"] or {}).get("body", {}).get("error", {}).get("message") or error["error"]["message"]
    assert "embeds (task embed) and cannot generate" in message
