"""`tide bench --control-plane`: the control plane alone, on null engines, from submit to `completed`.

    tide bench --control-plane [--rows 1000000] [--workers 2] [--formats jsonl,parquet] [--storage s3]

Starts a real redis-server, moto's S3 server (or uses a local directory) and `--workers` `tide worker --engine null`
processes; writes one job of `--rows` rows per input format, submits it in this process and waits for it. Per
format it prints rows/s end to end and per stage (planning, dispatch, the workers, their writes, finalize), Redis
commands and network bytes per row, Redis memory at the job's peak, and each process's peak RSS. Every id is
checked to come back exactly once.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BUCKET = "tide-control-plane"
SERVED = "null"


@dataclass
class Figures:
    """What one run measured; `stages` holds (seconds, rows/s) per stage."""

    name: str
    rows: int
    total_s: float = 0.0
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    redis: dict[str, float] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)
    cpu_us_per_row: dict[str, float] = field(default_factory=dict)


def write_input(path: Path, rows: int, fmt: str) -> Path:
    """`rows` short chat prompts with unique ids, as JSONL or Parquet (row groups of 64k)."""
    ids = [f"r{i}" for i in range(rows)]
    prompts = [f"Question {i}: what comes after {i}?" for i in range(rows)]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": ids, "prompt": prompts}), path, row_group_size=65_536)
        return path
    with open(path, "w") as f:
        f.writelines(json.dumps({"id": custom_id, "prompt": prompt}) + "\n" for custom_id, prompt in zip(ids, prompts))
    return path


class RedisSampler:
    """Redis's command and byte counters over the job; its memory and client connections sampled every 0.2 s for
    the job's peak."""

    def __init__(self, client) -> None:
        self.client, self.peak, self.peak_clients, self._done = client, 0, 0, threading.Event()
        self.start = self._counters()
        self.baseline = client.info("memory")["used_memory"]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _counters(self) -> dict[str, int]:
        info = self.client.info("stats")
        return {k: info[k] for k in ("total_commands_processed", "total_net_input_bytes", "total_net_output_bytes")}

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self.peak = max(self.peak, self.client.info("memory")["used_memory"])
            self.peak_clients = max(self.peak_clients, self.client.info("clients")["connected_clients"])

    def finish(self, rows: int) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        end = self._counters()
        delta = {k: end[k] - self.start[k] for k in end}
        return {"commands/row": delta["total_commands_processed"] / rows,
                "bytes in/row": delta["total_net_input_bytes"] / rows,
                "bytes out/row": delta["total_net_output_bytes"] / rows,
                "peak MiB above idle": max(0, self.peak - self.baseline) / 2**20,
                "peak bytes/row": max(0, self.peak - self.baseline) / rows,
                "peak connections (all processes)": self.peak_clients}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: a per-row cost that, unlike wall time, holds on a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(processes: dict) -> dict[str, float]:
    """CPU seconds so far of each service process and of this one (planning, fan-out and polling)."""
    own = os.times()
    return {name: cpu_seconds(p.pid) for name, p in processes.items()} | {"submitter": own.user + own.system}


def run_job(name: str, input_uri: str, output_uri: str, rows: int, shard_rows: int, store, dispatcher,
            storage) -> Figures:
    """Submit one job in stages (create, plan, fan out), wait for it, and read the stage times off its state."""
    from tide.jobs.lifecycle import create_job, fan_out, new_job_id
    from tide.jobs.planner import plan_job
    from tide.jobs.specs import JobSpec

    figures = Figures(name, rows)
    sampler = RedisSampler(store.redis)
    spec = JobSpec(input=input_uri, output=output_uri, model=SERVED, shard_rows=shard_rows,
                   sampling={"max_tokens": 8})
    started = time.time()
    job = create_job(spec, store, new_job_id(), storage)
    plan = plan_job(spec, storage)
    planned = time.time()
    job = fan_out(job, plan, store, dispatcher)
    dispatched = time.time()
    while not (job := store.get_job(job.id)).status.terminal:
        time.sleep(0.05)
    figures.total_s = job.completed_at - started
    figures.redis = sampler.finish(rows)
    shards = store.get_shards(job.id)
    assert job.status.value == "completed" and job.request_counts.completed == rows, job
    work_s = max(s.finished_at for s in shards) - min(s.started_at for s in shards)
    write_s = sum(s.write_s or 0.0 for s in shards)
    stages = {"planning": planned - started, "dispatch": dispatched - planned, "workers": work_s,
              "writes (sum over shards)": write_s, "finalize": job.completed_at - job.finalizing_at}
    figures.stages = {stage: (seconds, rows / seconds if seconds else float("inf"))
                      for stage, seconds in stages.items()}
    check_ids(job.output_prefix, rows, storage)
    return figures


def check_ids(output_prefix: str, rows: int, storage) -> None:
    """Every input id once in the results, read back column-wise."""
    import pyarrow.parquet as pq

    from tide.jobs.storage import resolve

    prefix, seen = resolve(output_prefix, storage), 0
    ids: set[str] = set()
    for name in sorted(n for n in prefix.list_names() if n.startswith("part-")):
        with prefix.child(name).open_read() as f:
            column = pq.read_table(f, columns=["custom_id"]).column(0).to_pylist()
        seen += len(column)
        ids.update(column)
    assert seen == rows and len(ids) == rows, f"{seen} result rows, {len(ids)} distinct ids, {rows} expected"


def print_figures(f: Figures, workers: int) -> None:
    print(f"\n{f.name}: {f.rows} rows on {workers} null workers: {f.rows / f.total_s:,.0f} rows/s end to end "
          f"({f.total_s:.1f} s, submit to completed)")
    for stage, (seconds, rate) in f.stages.items():
        print(f"  {stage:<26} {seconds:8.2f} s  {rate:>12,.0f} rows/s")
    print("  redis: " + ", ".join(f"{k} {v:,.1f}" for k, v in f.redis.items()))
    print("  peak RSS MiB: " + ", ".join(f"{k} {v:,.0f}" for k, v in f.rss_mib.items()))
    print("  CPU us/row: " + ", ".join(f"{k} {v:,.1f}" for k, v in f.cpu_us_per_row.items())
          + f" (sum {sum(f.cpu_us_per_row.values()):,.1f})", flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide bench --control-plane", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--workers", type=int, default=2, help="`tide worker --engine null` processes")
    p.add_argument("--concurrency", type=int, default=4, help="shards each worker holds at once")
    p.add_argument("--shard-rows", type=int, default=10_000)
    p.add_argument("--null-tokens", type=int, default=8)
    p.add_argument("--formats", default="jsonl,parquet")
    p.add_argument("--storage", choices=["s3", "local"], default="s3")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tide-cp-") as tmp:
        for fmt in args.formats.split(","):
            print_figures(*run_format(args, fmt, Path(tmp)))
    return 0


def run_format(args: argparse.Namespace, fmt: str, workdir: Path) -> tuple[Figures, int]:
    """Fresh services for one format, so Redis's peak memory is this job's."""
    from tide.jobs.storage import StorageConfig, s3_client
    from tide.jobs.store import RedisJobStore
    from tide.workers.celery_app import make_app
    from tide.workers.dispatch import CeleryDispatcher
    from tide.workers.processes import service_env, start_moto, start_redis, start_worker, stop

    run_dir = workdir / fmt
    run_dir.mkdir()
    source = write_input(run_dir / f"in.{fmt}", args.rows, fmt)
    redis_proc, redis_url = start_redis(run_dir)
    processes = {"redis": redis_proc}
    storage = StorageConfig()
    if args.storage == "s3":
        processes["moto"], s3_url = start_moto()
        env = service_env(redis_url, s3_url)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("AWS_", "TIDE_"))})
        s3_client.cache_clear()
        s3_client().create_bucket(Bucket=BUCKET)
        s3_client().upload_file(str(source), BUCKET, source.name)
        input_uri, output_uri = f"s3://{BUCKET}/{source.name}", f"s3://{BUCKET}/out"
    else:
        env = {**os.environ, "TIDE_REDIS_URL": redis_url}
        input_uri, output_uri = str(source), str(run_dir / "out")
    try:
        for i in range(args.workers):
            processes[f"worker{i}"] = start_worker(
                SERVED, SERVED, env, run_dir / f"worker-{i}.log", concurrency=args.concurrency,
                extra=("--engine", "null", "--null-tokens", str(args.null_tokens)))
        store = RedisJobStore.from_url(redis_url)
        cpu_before = cpu_snapshot(processes)
        figures = run_job(f"{fmt} from {args.storage}", input_uri, output_uri, args.rows, args.shard_rows, store,
                          CeleryDispatcher(make_app(redis_url)), storage)
        figures.rss_mib = {name: peak_rss_mib(p.pid) for name, p in processes.items()}
        figures.rss_mib["submitter (this process)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cpu_after = cpu_snapshot(processes)
        figures.cpu_us_per_row = {name: (cpu_after[name] - cpu_before[name]) * 1e6 / args.rows for name in cpu_after}
        return figures, args.workers
    finally:
        for process in processes.values():
            stop(process)


if __name__ == "__main__":
    raise SystemExit(main())
