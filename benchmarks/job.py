"""End-to-end benchmark: a job through Redis, a `tide worker` and S3 vs the raw engine on the same prompts.

    python -P -m tide.benchmarks.job [--rows 500] [--max-tokens 16] [--model smollm2-135m]

Starts its own redis-server and moto S3 server (unless --redis-url/--s3-url are given) and one worker. Alternates
raw runs (`LLM.generate` in this process) with jobs (timed from submit to completed by the job's own timestamps:
planning, queueing, Parquet writes to S3 and finalization included; worker start-up excluded), so drifting load
from other processes hits both sides; prints every figure and the ratio of medians. Both engines are warmed up.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

BUCKET = "tide-bench"
WARMUP_ROWS = 8
SUBJECTS = ["the moon", "bread", "rivers", "volcanoes", "chess", "bees", "glass", "the internet", "clocks", "salt",
            "trains", "music", "maps", "coffee", "whales", "paper"]
ASKS = ["Describe {} in one sentence.", "Give a fun fact about {}.", "Why do people like {}?",
        "Write a title for an essay about {}.", "What is the history of {}?", "Explain {} to a child."]


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": rng.choice(ASKS).format(rng.choice(SUBJECTS))}]}
            for i in range(n)]


class RawEngine:
    """The engine on its own, through the offline API, with the same config as the worker's."""

    def __init__(self, args: argparse.Namespace, rows: list[dict]) -> None:
        from tide.engine import LLM, SamplingParams

        self.llm = LLM(model=args.model, dtype=args.dtype, max_num_seqs=args.max_num_seqs)
        self.params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True)
        self.prompts = [r["messages"] for r in rows]
        self.llm.generate(self.prompts[:WARMUP_ROWS], self.params)

    def rate(self, on_thread: bool) -> float:
        """Output tokens/s of one `generate` over all prompts, on this thread or on a fresh one (as a worker's
        engine service runs it): on this 2-core machine the two have differed several-fold under load."""
        result: list[float] = []

        def timed() -> None:
            started = time.perf_counter()
            outputs = self.llm.generate(self.prompts, self.params)
            result.append(sum(len(o.token_ids) for o in outputs) / (time.perf_counter() - started))

        if on_thread:
            thread = threading.Thread(target=timed)
            thread.start()
            thread.join()
        else:
            timed()
        return result[0]


class QueuedJobs:
    """Redis, an S3 endpoint and one `tide worker`, started for the benchmark (each unless given) and stopped."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir, self.processes = args, workdir, []

    def __enter__(self) -> "QueuedJobs":
        from tide.jobs.storage import s3_client
        from tide.jobs.store import RedisJobStore
        from tide.workers.celery_app import make_app
        from tide.workers.dispatch import CeleryDispatcher
        from tide.workers.processes import (
            service_env,
            start_moto,
            start_redis,
            start_worker,
        )

        args = self.args
        redis_url, s3_url = args.redis_url, args.s3_url
        if redis_url is None:
            process, redis_url = start_redis(self.workdir)
            self.processes.append(process)
        if s3_url is None:
            process, s3_url = start_moto()
            self.processes.append(process)
        env = service_env(redis_url, s3_url)
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        s3_client.cache_clear()
        s3_client().create_bucket(Bucket=BUCKET)
        self.processes.append(start_worker(args.model, "bench", env, self.workdir / "worker.log",
                                           concurrency=args.concurrency,
                                           extra=("--max-num-seqs", str(args.max_num_seqs), "--dtype", args.dtype)))
        self.store = RedisJobStore.from_url(redis_url)
        self.dispatcher = CeleryDispatcher(make_app(redis_url))
        return self

    def __exit__(self, *exc) -> None:
        from tide.workers.processes import stop

        for process in reversed(self.processes):
            stop(process, timeout_s=60)

    def run(self, rows: list[dict], name: str) -> tuple[float, dict]:
        """Output tokens/s of one job from submit to completed, and its summary."""
        from tide.jobs.lifecycle import submit_job
        from tide.jobs.progress import wait_for_job
        from tide.jobs.specs import JobSpec
        from tide.jobs.storage import StorageConfig, resolve, s3_client

        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        s3_client().put_object(Bucket=BUCKET, Key=f"{name}.jsonl", Body=body)
        args = self.args
        spec = JobSpec(input=f"s3://{BUCKET}/{name}.jsonl", output=f"s3://{BUCKET}/out", model="bench",
                       shard_rows=args.shard_rows,
                       sampling={"temperature": 0.0, "max_tokens": args.max_tokens, "ignore_eos": True})
        storage = StorageConfig()
        job = submit_job(spec, self.store, self.dispatcher, storage)
        # Timed by the job's own timestamps (created -> completed), so this process can poll rarely: polling
        # often would take CPU from the worker on a 2-core machine.
        job = wait_for_job(self.store, job.id, poll_s=1.0, show=False, timeout_s=3600)
        wall = job.completed_at - job.created_at
        return job.usage.completion_tokens / wall, json.loads(resolve(job.summary_uri, storage).read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m tide.benchmarks.job", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--shard-rows", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=2, help="shards a worker holds at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--s3-url", default=None)
    parser.add_argument("--repeats", type=int, default=2, help="jobs to run, each between two raw runs")
    parser.add_argument("--raw-modes", default="main,thread",
                        help="raw runs to compare with: main (generate on the main thread), thread (on its own)")
    args = parser.parse_args(argv)
    rows = make_rows(args.rows, args.seed)
    raw = RawEngine(args, rows)
    modes = {name: on_thread for name, on_thread in (("main thread", False), ("own thread", True))
             if ("thread" if on_thread else "main") in args.raw_modes.split(",")}
    raw_rates: dict[str, list[float]] = {name: [] for name in modes}
    jobs: list[tuple[float, dict, float]] = []

    def measure_raw() -> None:
        for name, on_thread in modes.items():
            raw_rates[name].append(raw.rate(on_thread))

    # raw, job, raw, job, ..., raw: load from other processes drifts, so each job sits between two raw runs.
    measure_raw()
    with tempfile.TemporaryDirectory(prefix="tide-bench-") as tmp, QueuedJobs(args, Path(tmp)) as queued:
        _, warmup = queued.run(rows[:WARMUP_ROWS], "warmup")
        busy_before = _engine_busy(warmup)
        for i in range(args.repeats):
            rate, summary = queued.run(rows, f"bench-{i}")
            jobs.append((rate, summary, _engine_busy(summary) - busy_before))
            busy_before = _engine_busy(summary)
            measure_raw()
    _report(args, raw_rates, jobs)
    return 0


def _engine_busy(summary: dict) -> float:
    return next(iter(summary["workers"].values()))["engine_busy_s"]


def _report(args: argparse.Namespace, raw_rates: dict[str, list[float]], jobs: list[tuple[float, dict, float]]):
    print(f"{args.rows} chat rows, {args.max_tokens} output tokens each (ignore_eos), {args.model}, "
          f"max_num_seqs {args.max_num_seqs}, shards of {args.shard_rows}, worker concurrency {args.concurrency}")
    for name, rates in raw_rates.items():
        print(f"  raw engine, generate on {name:<11}: " + ", ".join(f"{r:.1f}" for r in rates)
              + f" output tok/s (median {statistics.median(rates):.1f})")
    for rate, summary, busy in jobs:
        wall = summary["wall_time_s"]
        print(f"  tide job (Redis + worker + S3)         : {rate:.1f} output tok/s submit to completed "
              f"({summary['request_counts']['completed']}/{args.rows} rows; engine busy {busy:.1f} s of the "
              f"{wall:.1f} s the job was in progress)")
    job_rate = statistics.median(rate for rate, _, _ in jobs)
    best_name, best = max(((n, statistics.median(r)) for n, r in raw_rates.items()), key=lambda item: item[1])
    print(f"ratio job / raw ({best_name}), medians: {job_rate / best:.1%}")


if __name__ == "__main__":
    raise SystemExit(main())
