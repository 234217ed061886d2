"""Faults with real processes: real redis-server, moto's S3 server and `tide worker` processes on short leases.

Each test runs a multi-shard job on its own queue, breaks something mid-job, and checks that the job completes with
every id exactly once. The figures in docs/RELIABILITY.md come from these runs (the `FAULT` lines they print).
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from tests.helpers.services import BUCKET, put_jsonl, read_s3_parts, submit, tide
from tide.commands.worker import POISON_EXIT_STATUS
from tide.jobs.leases.book import LeaseBook
from tide.jobs.lifecycle import job_status
from tide.jobs.state import ShardStatus
from tide.jobs.store import RedisJobStore
from tide.workers.celery_app import make_app
from tide.workers.dispatch import CeleryDispatcher
from tide.workers.processes import free_port, start_redis, start_worker, stop

LEASES = {"TIDE_LEASE_TTL_S": "3", "TIDE_LEASE_RENEW_S": "0.5", "TIDE_REAPER_INTERVAL_S": "0.5"}
# Every fault worker runs with these; the last test greps their logs, Redis and the result files for them.
SECRETS = {"AWS_SECRET_ACCESS_KEY": "aws-secret-7Qm2vX9pL4", "TIDE_WEBHOOK_SECRET": "webhook-secret-R8kT3nW6",
           "TIDE_API_KEYS": "api-key-secret-J5hY1cB0"}
LOG_NAMES = ("pool", "redis-restart", "kv-full")
SLOW = ["--max-tokens", "48", "--sampling", '{"ignore_eos": true, "temperature": 0}']


def fault_env(services, **extra: str) -> dict[str, str]:
    return {**services.env, **LEASES, **SECRETS, **extra}


def rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"Item {i}:"} for i in range(n)]


def report(fault: str, lost: int, duplicated: int, recover_s: float) -> None:
    print(f"\nFAULT {fault}: rows lost {lost}, duplicated {duplicated}, recovered in {recover_s:.1f} s")


def check_exactly_once(store, job_id: str, expected: list[str], errors: int = 0) -> tuple[int, int]:
    got = [r["custom_id"] for r in read_s3_parts(BUCKET, f"results/{job_id}", "part-")]
    lost, duplicated = len(set(expected) - set(got)), len(got) - len(set(got))
    assert sorted(got) == sorted(expected)
    counts = job_status(store, job_id).request_counts
    assert (counts.completed, counts.failed) == (len(expected), errors)
    return lost, duplicated


def wait_for(condition, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        time.sleep(0.1)


class Outage:
    """A TCP proxy in front of the S3 endpoint that can refuse every connection for a while (moto keeps objects in
    memory, so the endpoint itself must not be stopped)."""

    def __init__(self, target: str) -> None:
        self.target = int(target.rsplit(":", 1)[1])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in self._open:
            try:
                sock.close()
            except OSError:
                pass
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                return
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (a, b):
                try:
                    sock.close()
                except OSError:
                    pass



@contextmanager
def workers(services, served: str, n: int, env: dict[str, str], name: str):
    procs = [start_worker(services.model_dir, served, env, services.logs / f"{name}-{i}.log") for i in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            stop(p, timeout_s=60)


class Pool:
    """Two fault workers on one queue, reaching S3 through an `Outage` proxy, restarted when they die (as
    Kubernetes would); shared by the tests below so each does not pay for worker start-ups."""

    served = "tiny-fault"
    poison_prompt = "Item 5: poison"  # no other test's rows have it

    def __init__(self, services) -> None:
        self.services, self.outage = services, Outage(services.s3_url)
        self.env = fault_env(services, AWS_ENDPOINT_URL=self.outage.url, TIDE_STORAGE_RETRY_S="120",
                             TIDE_TEST_EXIT_ON_PROMPT=self.poison_prompt)
        self.deaths: list[int] = []
        self.procs = [self._start(f"pool-{i}") for i in range(2)]
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def _start(self, name: str):
        return start_worker(self.services.model_dir, self.served, self.env, self.services.logs / f"{name}.log")

    def _supervise(self) -> None:
        while not self._stop.wait(0.2):
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    self.deaths.append(p.returncode)
                    self.procs[i] = self._start(f"pool-restart-{len(self.deaths)}")

    def submit(self, name: str, job_rows: list[dict], *args: str) -> str:
        uri = put_jsonl(BUCKET, f"inputs/{name}.jsonl", job_rows)
        return submit(self.services.env, uri, "--output", f"s3://{BUCKET}/results", "--model", self.served, *args)

    def close(self) -> None:
        self._stop.set()
        self._supervisor.join()
        for p in self.procs:
            stop(p, timeout_s=60)


@pytest.fixture(scope="module")
def pool(services):
    pool = Pool(services)
    yield pool
    pool.close()


def test_kill_9_mid_shard_job_completes_within_two_minutes(services, pool):
    store = RedisJobStore.from_url(services.redis_url)
    job_id = pool.submit("kill9", rows("k", 96), "--shard-rows", "8", *SLOW)
    victim = pool.procs[0]
    mine = f"-{victim.pid}@"
    wait_for(lambda: any(s.status == ShardStatus.RUNNING and mine in (s.worker or "")
                         for s in store.get_shards(job_id)), "a shard running on the victim")
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    waited = tide(services.env, "wait", job_id, "--timeout", "120")
    recover = time.monotonic() - killed
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert recover < 120
    lost, duplicated = check_exactly_once(store, job_id, [f"k{i}" for i in range(96)])
    assert sum(s.lost for s in store.get_shards(job_id)) >= 1  # the victim's shards were taken back
    report("kill -9 of a worker mid-shard", lost, duplicated, recover)


def test_the_same_shard_delivered_twice_commits_one_part(services, pool):
    store = RedisJobStore.from_url(services.redis_url)
    dispatcher = CeleryDispatcher(make_app(services.redis_url))
    book = LeaseBook(store.redis)
    started = time.monotonic()
    job_id = pool.submit("twice", rows("t", 32), "--shard-rows", "8", *SLOW)
    for index in range(4):  # every shard a second time, to whichever worker is free
        dispatcher.send_shard(book.get_task(job_id, index))
    waited = tide(services.env, "wait", job_id, "--timeout", "120")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    lost, duplicated = check_exactly_once(store, job_id, [f"t{i}" for i in range(32)])
    assert all(s.runs == 1 for s in store.get_shards(job_id))  # the second delivery of each was refused
    report("the same shard delivered twice", lost, duplicated, time.monotonic() - started)


def test_a_poison_row_fails_alone_after_killing_workers(services, pool):
    """A test hook makes the worker process exit when row `poison-5` (its prompt) comes up. After two deaths the
    row is set aside as an error row; every other row is a result."""
    store = RedisJobStore.from_url(services.redis_url)
    deaths = len(pool.deaths)
    started = time.monotonic()
    job_rows = [{**row, "prompt": pool.poison_prompt} if row["id"] == "poison-5" else row
                for row in rows("poison-", 16)]
    job_id = pool.submit("poison", job_rows, "--shard-rows", "8", "--max-tokens", "8")
    waited = tide(services.env, "wait", job_id, "--timeout", "180")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert pool.deaths[deaths:] == [POISON_EXIT_STATUS] * 2
    expected = [f"poison-{i}" for i in range(16) if i != 5]
    lost, duplicated = check_exactly_once(store, job_id, expected, errors=1)
    errors = read_s3_parts(BUCKET, f"results/{job_id}", "errors-")
    assert [(e["custom_id"], e["code"]) for e in errors] == [("poison-5", "worker_crashed")]
    report("a poison row that kills its worker", lost, duplicated, time.monotonic() - started)


def test_s3_down_for_30_seconds_delays_the_job_without_failing_it(services, pool):
    store = RedisJobStore.from_url(services.redis_url)
    job_id = pool.submit("s3down", rows("s", 48), "--shard-rows", "8", *SLOW)
    wait_for(lambda: any(s.status == ShardStatus.DONE for s in store.get_shards(job_id)), "a finished shard")
    pool.outage.down()
    time.sleep(30)
    pool.outage.up()
    back = time.monotonic()
    waited = tide(services.env, "wait", job_id, "--timeout", "180")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    lost, duplicated = check_exactly_once(store, job_id, [f"s{i}" for i in range(48)])
    assert all(s.status == ShardStatus.DONE for s in store.get_shards(job_id))
    report("S3 endpoint down for 30 s", lost, duplicated, time.monotonic() - back)


def test_redis_restarted_mid_job_with_aof_loses_nothing(services, tmp_path):
    served = "tiny-fault-redis"
    redis_proc, redis_url = start_redis(tmp_path, aof=True, log=tmp_path / "redis.log")
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    env = {**fault_env(services), "TIDE_REDIS_URL": redis_url}
    try:
        store = RedisJobStore.from_url(redis_url)
        with workers(services, served, 1, env, "redis-restart"):
            uri = put_jsonl(BUCKET, "inputs/redis-restart.jsonl", rows("r", 48))
            job_id = submit(env, uri, "--output", f"s3://{BUCKET}/results", "--model", served,
                            "--shard-rows", "8", *SLOW)
            wait_for(lambda: any(s.status == ShardStatus.DONE for s in store.get_shards(job_id)), "a finished shard")
            stop(redis_proc)  # SIGTERM: redis-server flushes its append-only file and exits
            restarted = time.monotonic()
            redis_proc, _ = start_redis(tmp_path, port=port, aof=True, log=tmp_path / "redis.log")
            waited = tide(env, "wait", job_id, "--timeout", "180")
            assert waited.returncode == 0, waited.stdout + waited.stderr
            lost, duplicated = check_exactly_once(store, job_id, [f"r{i}" for i in range(48)])
    finally:
        stop(redis_proc)
    report("Redis restarted mid-job (AOF on)", lost, duplicated, time.monotonic() - restarted)


def test_kv_cache_full_preempts_and_only_a_prompt_that_can_never_fit_fails(services):
    """A worker with a KV cache of 10 blocks (160 tokens) under 32 sequences of ~55 tokens: they take turns through
    preemption and all finish; a prompt longer than the whole cache fails alone, naming its length and the limit."""
    from transformers import AutoConfig

    served = "tiny-fault-kv"
    store = RedisJobStore.from_url(services.redis_url)
    cfg = AutoConfig.from_pretrained(services.model_dir)
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    extra = ("--dtype", "float32", "--max-num-seqs", "32", "--kv-cache-bytes", str(per_token * 160))
    worker = start_worker(services.model_dir, served, fault_env(services), services.logs / "kv-full.log", extra=extra)
    try:
        uri = put_jsonl(BUCKET, "inputs/kv.jsonl", rows("v", 32) + [{"id": "huge", "prompt": "word " * 300}])
        started = time.monotonic()
        job_id = submit(services.env, uri, "--output", f"s3://{BUCKET}/results", "--model", served,
                        "--shard-rows", "33", *SLOW)
        waited = tide(services.env, "wait", job_id, "--timeout", "180")
        assert waited.returncode == 0, waited.stdout + waited.stderr
    finally:
        stop(worker)
    lost, duplicated = check_exactly_once(store, job_id, [f"v{i}" for i in range(32)], errors=1)
    assert all(r["completion_tokens"] == 48 for r in read_s3_parts(BUCKET, f"results/{job_id}", "part-"))
    (error,) = read_s3_parts(BUCKET, f"results/{job_id}", "errors-")
    assert error["custom_id"] == "huge" and error["code"] == "context_length_exceeded"
    assert "prompt has" in error["message"] and "KV cache 160 tokens" in error["message"], error["message"]
    assert store.get_shards(job_id)[0].engine.preemptions > 0
    report("KV cache full (10 blocks, 32 sequences)", lost, duplicated, time.monotonic() - started)

def test_no_secret_in_logs_job_records_or_result_files(services):
    """Greps what the fault tests above left: worker logs, every Redis key, every object under results/."""
    logs = [p for p in services.logs.glob("*.log") if p.name.startswith(LOG_NAMES)]
    if not logs:
        pytest.skip("greps what the fault tests above leave; run the module")
    blobs = [p.read_bytes() for p in logs]
    client = RedisJobStore.from_url(services.redis_url).redis
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        if kind == "string":
            blobs.append(client.get(key) or b"")
        elif kind == "hash":
            blobs += list(client.hgetall(key).values())
        elif kind == "list":
            blobs += client.lrange(key, 0, -1)
        elif kind in ("set", "zset"):
            blobs += list(client.smembers(key)) if kind == "set" else client.zrange(key, 0, -1)
    from tide.jobs.storage import s3_client

    s3 = s3_client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="results/"):
        blobs += [s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in page.get("Contents", [])]
    leaked = [name for name, secret in SECRETS.items() if any(secret.encode() in blob for blob in blobs)]
    assert leaked == [], f"secrets found in logs, records or results: {leaked}"
    print(f"\nSECRETS grep: {len(logs)} logs, {len(blobs)} records and files, none holds a secret")
