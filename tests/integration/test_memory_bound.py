"""Sharding a 20k-row file streams it: peak memory stays far below the file's size."""
from __future__ import annotations

import json
import tracemalloc

from tests.helpers.services import BUCKET
from tide.jobs.planner import plan_job
from tide.jobs.specs import JobSpec
from tide.jobs.storage import StorageConfig, s3_client

ROWS = 20_000
PROMPT_BYTES = 2_000
BOUND_BYTES = 16 * 2**20  # well under half the file: reading it whole (its bytes alone) would not fit


def test_sharding_a_20k_row_file_from_s3_stays_within_a_fixed_memory_bound(services):
    filler = "lorem ipsum dolor sit amet " * (PROMPT_BYTES // 27)
    body = "".join(json.dumps({"id": f"r{i}", "prompt": f"{i} {filler}"}) + "\n" for i in range(ROWS)).encode()
    assert len(body) > 2 * BOUND_BYTES
    s3_client().put_object(Bucket=BUCKET, Key="inputs/big.jsonl", Body=body)
    del body
    spec = JobSpec(input=f"s3://{BUCKET}/inputs/big.jsonl", output=f"s3://{BUCKET}/unused", shard_rows=500)
    tracemalloc.start()
    try:
        plan = plan_job(spec, StorageConfig())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.total_rows == ROWS and plan.invalid_rows == 0 and len(plan.shards) == ROWS // 500
    assert peak < BOUND_BYTES, f"peak {peak / 2**20:.1f} MiB while sharding"
    print(f"peak traced memory while sharding {ROWS} rows: {peak / 2**20:.1f} MiB")
