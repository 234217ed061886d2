"""Load figures for docs/RELIABILITY.md: a 1M-row JSONL planned in bounded memory, and a 20k-row job on two
`tide worker` processes with exact counts while their RSS is sampled through the run.

    python -P -m tide.benchmarks.load --model DIR [--rows 20000] [--plan-rows 1000000] [--workers 2] [--max-tokens 4]

Starts its own redis-server, moto S3 server and workers (see workers/processes.py); prints one line per figure.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

BUCKET = "tide-load"


def plan_figures(rows: int, workdir: Path) -> None:
    from tide.jobs.planner import plan_job
    from tide.jobs.specs import JobSpec
    from tide.jobs.storage import StorageConfig

    path = workdir / "million.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"r{i}", "prompt": f"Question {i}: what comes after {i}?"}) + "\n")
    size = path.stat().st_size
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    started = time.perf_counter()
    plan = plan_job(JobSpec(input=str(path), output=str(workdir / "out"), shard_rows=256), StorageConfig())
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert plan.total_rows == rows and plan.invalid_rows == 0
    print(f"plan: {rows} rows ({size / 2**20:.0f} MiB) -> {len(plan.shards)} shards in {elapsed:.1f} s "
          f"({rows / elapsed:.0f} rows/s); peak traced Python memory {peak / 2**20:.1f} MiB; peak RSS grew by "
          f"{max(0, rss_after - rss_before) / 2**20:.0f} MiB", flush=True)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def job_figures(args: argparse.Namespace, workdir: Path) -> None:
    from tide.jobs.lifecycle import job_status, submit_job
    from tide.jobs.results import iter_output_rows
    from tide.jobs.specs import JobSpec
    from tide.jobs.storage import StorageConfig, resolve, s3_client
    from tide.jobs.store import RedisJobStore
    from tide.workers.celery_app import make_app
    from tide.workers.dispatch import CeleryDispatcher
    from tide.workers.processes import (
        service_env,
        start_moto,
        start_redis,
        start_worker,
        stop,
    )

    redis_proc, redis_url = start_redis(workdir)
    moto_proc, s3_url = start_moto()
    env = service_env(redis_url, s3_url)
    os.environ.update({k: v for k, v in env.items() if k.startswith(("AWS_", "TIDE_"))})
    s3_client.cache_clear()
    s3_client().create_bucket(Bucket=BUCKET)
    workers = [start_worker(args.model, "load", env, workdir / f"worker-{i}.log",
                            extra=("--dtype", "float32", "--max-num-seqs", "64", "--threads", "1"))
               for i in range(args.workers)]
    samples: dict[int, list[float]] = {w.pid: [] for w in workers}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(2.0):
            for pid in samples:
                samples[pid].append(rss_mib(pid))

    try:
        body = "".join(json.dumps({"id": f"r{i}", "prompt": f"Item {i}:"}) + "\n" for i in range(args.rows))
        s3_client().put_object(Bucket=BUCKET, Key="load.jsonl", Body=body.encode())
        store = RedisJobStore.from_url(redis_url)
        threading.Thread(target=sample, daemon=True).start()
        spec = JobSpec(input=f"s3://{BUCKET}/load.jsonl", output=f"s3://{BUCKET}/results", model="load",
                       shard_rows=500, sampling={"max_tokens": args.max_tokens, "ignore_eos": True})
        started = time.perf_counter()
        job = submit_job(spec, store, CeleryDispatcher(make_app(redis_url)), StorageConfig())
        while not job_status(store, job.id).status.terminal:
            time.sleep(1)
        elapsed = time.perf_counter() - started
        done.set()
        final = job_status(store, job.id)
        ids = [r["custom_id"] for r in iter_output_rows(resolve(final.output_prefix, StorageConfig()))]
        print(f"job: {args.rows} rows on {args.workers} workers, {final.status.value} in {elapsed:.0f} s "
              f"({args.rows / elapsed:.0f} rows/s); completed {final.request_counts.completed}, failed "
              f"{final.request_counts.failed}; ids in results {len(ids)}, distinct {len(set(ids))}", flush=True)
        for pid, values in samples.items():
            third = max(1, len(values) // 3)
            print(f"worker {pid} RSS MiB: first third max {max(values[:third]):.0f}, last third max "
                  f"{max(values[-third:]):.0f}, overall max {max(values):.0f} ({len(values)} samples)", flush=True)
    finally:
        done.set()
        for process in workers + [moto_proc, redis_proc]:
            stop(process)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.load", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model alias or HF directory the workers serve")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--plan-rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tide-load-") as tmp:
        if args.plan_rows:
            plan_figures(args.plan_rows, Path(tmp))
        if args.rows:
            job_figures(args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
