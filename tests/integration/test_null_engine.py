"""`tide worker --engine null` through the real control plane: real redis-server, moto's S3 server, a real worker
process, every row once with the null engine's fixed output; and the null engine is never started unless asked."""
from __future__ import annotations

import subprocess

from tests.helpers.services import BUCKET, put_jsonl, read_s3_json, read_s3_parts, submit, tide
from tide.workers.processes import start_worker, stop, tide_command

SERVED = "null-model"
TOKENS = 3


def test_a_job_on_null_workers_writes_every_row_once_with_counts_that_add_up(services):
    log = services.logs / "null-worker.log"
    worker = start_worker("no-such-model-is-loaded", SERVED, services.env, log,
                          extra=("--engine", "null", "--null-tokens", str(TOKENS)))
    try:
        assert b"NULL ENGINE" in log.read_bytes()
        rows = [{"id": f"n{i}", "prompt": f"word {i} and more"} for i in range(500)] + ["{not json"]
        uri = put_jsonl(BUCKET, "null/in.jsonl", rows)
        job_id = submit(services.env, uri, "--model", SERVED, "--output", f"s3://{BUCKET}/null/out",
                        "--shard-rows", "64")
        waited = tide(services.env, "wait", job_id, "--timeout", "120")
        assert "500 completed, 1 failed of 501" in waited.stdout, waited.stderr  # the bad line fails alone
    finally:
        stop(worker)
    results = read_s3_parts(BUCKET, f"null/out/{job_id}", "part-")
    assert sorted(r["custom_id"] for r in results) == sorted(f"n{i}" for i in range(500))
    assert {(r["completion_tokens"], r["text"]) for r in results} == {(TOKENS, " null" * TOKENS)}
    assert [r["prompt_tokens"] for r in sorted(results, key=lambda r: r["row_index"])][:2] == [4, 4]
    summary = read_s3_json(BUCKET, f"null/out/{job_id}/summary.json")
    assert summary["request_counts"] == {"total": 501, "completed": 500, "failed": 1}
    assert summary["usage"]["completion_tokens"] == 500 * TOKENS


def test_null_tokens_without_the_null_engine_is_refused(services):
    result = subprocess.run(tide_command("worker", "--model", SERVED, "--null-tokens", "4"), env=services.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--engine null" in result.stderr
