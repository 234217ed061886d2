"""A long embedding job through a real `tide worker`, with the worker's memory sampled as the rows go by.

    python -P -m tide.benchmarks.embed_memory [--texts 1000000] [--short] [--shard-rows 5000] [--every-s 5]

Starts its own redis-server and one `tide worker` serving `--model` (local files in and out, no S3), writes `--texts`
native `{id, input}` rows (`workloads.embedding_texts`: a search index's length mix, or with `--short` its query-length
share alone, 3-16 words), submits one `task: embed` job and reads the worker's resident memory (VmRSS from /proc)
every `--every-s` seconds. It prints the RSS when 10%, 20%, ... 100% of the rows are done, with the rate so far, and
the worker's peak (VmHWM): a flat series is memory that does not grow with the job.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tide.benchmarks.workloads import EMBEDDING_MIX, SHORT_EMBEDDING_MIX, iter_embedding_texts

SERVED = "embed-memory"


@dataclass
class Sample:
    seconds: float
    done: int
    rss_mib: float


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of process `pid`, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def write_rows(path: Path, count: int, short: bool, seed: int) -> None:
    mix = SHORT_EMBEDDING_MIX if short else EMBEDDING_MIX
    with path.open("w") as out:
        for i, text in enumerate(iter_embedding_texts(count, seed, mix)):
            out.write(json.dumps({"id": f"t{i}", "input": text}) + "\n")


def at_tenths(samples: list[Sample], total: int) -> list[tuple[int, Sample]]:
    """The first sample at or past each tenth of the rows (10% ... 100%), as (percent, sample)."""
    marks = []
    for tenth in range(1, 11):
        reached = next((s for s in samples if s.done * 10 >= total * tenth), None)
        if reached is not None:
            marks.append((tenth * 10, reached))
    return marks


def run_job(args: argparse.Namespace, workdir: Path) -> tuple[list[Sample], float, object]:
    from tide.jobs.lifecycle import job_status, submit_job
    from tide.jobs.specs import JobSpec
    from tide.jobs.storage import StorageConfig
    from tide.jobs.store import RedisJobStore
    from tide.workers.celery_app import make_app
    from tide.workers.dispatch import CeleryDispatcher
    from tide.workers.processes import start_redis, start_worker, stop

    rows = workdir / "rows.jsonl"
    write_rows(rows, args.texts, args.short, args.seed)
    redis, url = start_redis(workdir)
    worker = None
    try:
        env = {**os.environ, "TIDE_REDIS_URL": url}
        worker = start_worker(args.model, SERVED, env, workdir / "worker.log", concurrency=args.concurrency,
                              extra=("--dtype", args.dtype))
        store = RedisJobStore.from_url(url)
        spec = JobSpec(input=str(rows), output=str(workdir / "out"), model=SERVED, shard_rows=args.shard_rows,
                       task="embed")
        started = time.monotonic()
        job = submit_job(spec, store, CeleryDispatcher(make_app(url)), StorageConfig())
        samples = [Sample(0.0, 0, proc_memory(worker.pid)["VmRSS"])]
        while not job.status.terminal:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited ({worker.returncode}); see {workdir / 'worker.log'}")
            time.sleep(args.every_s)
            job = job_status(store, job.id)
            counts = job.request_counts
            samples.append(Sample(time.monotonic() - started, counts.completed + counts.failed,
                                  proc_memory(worker.pid)["VmRSS"]))
            if args.verbose:
                print(f"  {samples[-1].seconds:7.0f} s  {samples[-1].done:>9,} rows  {samples[-1].rss_mib:7.0f} MiB",
                      flush=True)
        return samples, proc_memory(worker.pid)["VmHWM"], job
    finally:
        if worker is not None:
            stop(worker, timeout_s=60)
        stop(redis)


def report(args: argparse.Namespace, samples: list[Sample], peak_mib: float, job) -> None:
    mix = "short (3-16 words)" if args.short else "search-index mix"
    print(f"{args.texts:,} texts ({mix}), model {args.model}, {args.dtype}, shards of {args.shard_rows}, "
          f"worker concurrency {args.concurrency}: job {job.status.value}, "
          f"{job.request_counts.completed:,} completed, {job.request_counts.failed:,} failed, "
          f"{job.usage.prompt_tokens:,} tokens")
    print(f"  worker RSS when idle before the job: {samples[0].rss_mib:,.0f} MiB")
    for percent, s in at_tenths(samples, args.texts):
        rate = s.done / s.seconds if s.seconds else 0.0
        print(f"  {percent:3d}% of rows ({s.done:>9,}) at {s.seconds:7.0f} s ({rate:6.1f} texts/s): "
              f"RSS {s.rss_mib:,.0f} MiB")
    print(f"  peak RSS (VmHWM): {peak_mib:,.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.embed_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1_000_000)
    parser.add_argument("--short", action="store_true", help="query-length texts only (3-16 words)")
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shard-rows", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=2, help="shards the worker holds at once")
    parser.add_argument("--every-s", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep rows, results and the worker log here")
    parser.add_argument("--verbose", action="store_true", help="print every sample as it is taken")
    args = parser.parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        samples, peak, job = run_job(args, Path(args.workdir))
    else:
        with tempfile.TemporaryDirectory(prefix="tide-embed-memory-") as workdir:
            samples, peak, job = run_job(args, Path(workdir))
    report(args, samples, peak, job)
    return 0 if job.status.value == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
