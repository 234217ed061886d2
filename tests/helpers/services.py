"""What the integration tests share: their bucket and served-model names, S3 objects, CLI runs, parts read back."""
from __future__ import annotations

import io
import json
import subprocess

import pyarrow.parquet as pq

from tide.jobs.storage import s3_client
from tide.workers.processes import tide_command

BUCKET = "tide-it"
WEBHOOK_SECRET = "integration-secret"
SERVED = "tiny-llama"


def put_jsonl(bucket: str, key: str, rows: list) -> str:
    body = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    s3_client().put_object(Bucket=bucket, Key=key, Body=body)
    return f"s3://{bucket}/{key}"


def tide(env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(tide_command(*args), env=env, capture_output=True, text=True, timeout=timeout)


def submit(env: dict, *args: str) -> str:
    result = tide(env, "submit", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[0]


def read_s3_parts(bucket: str, prefix: str, kind: str) -> list[dict]:
    client = s3_client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
                  if o["Key"].rsplit("/", 1)[1].startswith(kind) and o["Key"].endswith(".parquet"))
    rows = []
    for key in keys:
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        rows += pq.read_table(io.BytesIO(data)).to_pylist()
    return rows


def read_s3_json(bucket: str, key: str) -> dict:
    return json.loads(s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())
