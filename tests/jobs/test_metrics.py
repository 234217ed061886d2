"""The service-wide counters a finished shard adds: rows, tokens, and latency histograms in Prometheus' buckets."""
from __future__ import annotations

import random

from tide.jobs.metrics import TTFT_BUCKETS, shard_counters
from tide.jobs.state import ShardProgress


def test_each_value_lands_in_the_first_bucket_at_or_above_it():
    values = [0.05, 0.0501, 0.1, 7.0, 1000.0, None, 0.0]
    fields = shard_counters("m", ShardProgress(completed=6, prompt_tokens=60), values, [])
    assert fields["m|ttft|le=0.05"] == 2 and fields["m|ttft|le=0.1"] == 2
    assert fields["m|ttft|le=10.0"] == 1 and fields["m|ttft|le=+Inf"] == 1
    assert fields["m|ttft|count"] == 6 and abs(fields["m|ttft|sum"] - 1007.2001) < 1e-9
    assert fields["m|rows_completed"] == 6 and fields["m|prompt_tokens"] == 60
    assert not any(k.startswith("m|tpot") for k in fields) and "m|rows_failed" not in fields  # zeros are left out


def test_bucket_counts_add_up_to_the_count():
    rng = random.Random(0)
    values = [rng.expovariate(0.5) for _ in range(1000)]
    fields = shard_counters("m", ShardProgress(), values, [])
    buckets = [fields.get(f"m|ttft|le={b}", 0) for b in (*TTFT_BUCKETS, "+Inf")]
    assert sum(buckets) == fields["m|ttft|count"] == 1000
    assert buckets[-1] == sum(v > TTFT_BUCKETS[-1] for v in values)
