"""Local services as subprocesses on free 127.0.0.1 ports: redis-server, moto's S3 server and `tide worker`.

Used by the integration tests and the end-to-end benchmark; production runs real Redis and S3 (see infra/).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], what: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before it was ready")
        if ready():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout_s} s")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RuntimeError("redis-server is not installed; on Debian/Ubuntu: apt-get install -y redis-server")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    def ping() -> bool:
        try:
            return redis.Redis(port=port, socket_connect_timeout=0.2).ping()
        except redis.RedisError:
            return False

    wait_until(ping, "redis-server", process, timeout_s=20)
    return process, f"redis://127.0.0.1:{port}/0"


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    binary = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, "moto_server", process, timeout_s=30)
    return process, f"http://127.0.0.1:{port}"


def start_worker(model_dir: Path, served: str, env: dict[str, str], log: Path, concurrency: int = 2,
                 extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """A real `tide worker` process; returns once Celery reports it ready to consume."""
    command = [sys.executable, "-m", "jobs", "worker", "--model", str(model_dir), "--served-name", served,
               "--dtype", "float32", "--concurrency", str(concurrency), "--max-num-seqs", "32", *extra]
    out = open(log, "ab")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    wait_until(lambda: b" ready." in log.read_bytes(), f"tide worker ({log})", process, timeout_s=120)
    return process


def service_env(redis_url: str, s3_url: str, **extra: str) -> dict[str, str]:
    """The environment a CLI or worker subprocess needs to reach these services (moto accepts any credentials)."""
    return {**os.environ, "TIDE_REDIS_URL": redis_url, "AWS_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}
