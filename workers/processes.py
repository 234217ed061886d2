"""Local services as subprocesses on 127.0.0.1: redis-server, an S3 endpoint, `tide worker` and `tide api`.

Used by `tide stack`, the integration tests and the end-to-end benchmark; production runs them as containers or
Kubernetes workloads (see docker-compose.yml and infra/).
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



def tide_command(*args: str) -> list[str]:
    """`python -P -m tide ARGS`: -P keeps the working directory off sys.path, so a source checkout's top-level
    folders (`kernels/` beside Hugging Face's `kernels` package) never shadow installed packages in the child."""
    return [sys.executable, "-P", "-m", "tide", *args]


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


def spawn(command: list[str], log: Path | None, env: dict[str, str] | None = None,
          detach: bool = False) -> subprocess.Popen:
    """Start `command` with its output in `log`; detached ones get their own session and outlive this process."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=detach)
    finally:
        if log is not None:
            out.close()


def redis_ready(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.2).ping())
    except redis.RedisError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_redis(workdir: Path, port: int | None = None, aof: bool = False, log: Path | None = None,
                detach: bool = False) -> tuple[subprocess.Popen, str]:
    """redis-server on 127.0.0.1 keeping its files in `workdir` (an append-only file with `aof`)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RuntimeError("redis-server is not installed; on Debian/Ubuntu: apt-get install -y redis-server")
    port = port or free_port()
    process = spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "yes" if aof else "no", "--dir", str(workdir),
                     "--maxmemory-policy", "noeviction"], log, detach=detach)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_ready(url), "redis-server", process, timeout_s=20)
    return process, url


def start_s3(workdir: Path, port: int | None = None, log: Path | None = None,
             detach: bool = False) -> tuple[subprocess.Popen, str, str]:
    """An S3-compatible endpoint: MinIO (objects on disk under `workdir`) when its binary is on PATH, else moto's
    server mode (objects in memory). Returns (process, endpoint URL, which one)."""
    port = port or free_port()
    minio = shutil.which("minio")
    if minio:
        env = {**os.environ, "MINIO_ROOT_USER": "tide", "MINIO_ROOT_PASSWORD": "tide-secret"}
        process = spawn([minio, "server", str(workdir), "--address", f"127.0.0.1:{port}", "--quiet"], log, env,
                        detach)
        kind = "minio"
    else:
        process = spawn([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                        log, detach=detach)
        kind = "moto"
    wait_until(lambda: listening(port), kind, process, timeout_s=30)
    return process, f"http://127.0.0.1:{port}", kind


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = spawn([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)], None)
    wait_until(lambda: listening(port), "moto_server", process, timeout_s=30)
    return process, f"http://127.0.0.1:{port}"


def start_worker(model_dir: Path | str, served: str, env: dict[str, str], log: Path, concurrency: int = 2,
                 extra: tuple[str, ...] = ("--dtype", "float32", "--max-num-seqs", "32"),
                 detach: bool = False) -> subprocess.Popen:
    """A real `tide worker` process; returns once Celery reports it ready to consume."""
    command = tide_command("worker", "--model", str(model_dir), "--served-name", served,
                           "--concurrency", str(concurrency), *extra)
    process = spawn(command, log, env, detach)
    wait_until(lambda: b" ready." in log.read_bytes(), f"tide worker ({log})", process, timeout_s=300)
    return process


def start_api(env: dict[str, str], port: int, log: Path, detach: bool = False) -> subprocess.Popen:
    """A real `tide api` process on 127.0.0.1:`port`; returns once it answers /readyz."""
    import urllib.request

    process = spawn(tide_command("api", "--host", "127.0.0.1", "--port", str(port)), log, env, detach)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    wait_until(ready, f"tide api ({log})", process, timeout_s=60)
    return process


def service_env(redis_url: str, s3_url: str, **extra: str) -> dict[str, str]:
    """The environment a CLI or worker subprocess needs to reach these services (moto accepts any credentials)."""
    return {**os.environ, "TIDE_REDIS_URL": redis_url, "AWS_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1", **extra}


def start_beat(env: dict[str, str], log: Path, detach: bool = False,
               extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """A real `tide beat` process (eval schedules from TIDE_EVALS_CONFIG or `--config` in `extra`, webhook
    delivery); returns once it is up."""
    process = spawn(tide_command("beat", *extra), log, env, detach)
    wait_until(lambda: log.exists() and b"tide beat: ready" in log.read_bytes(), f"tide beat ({log})", process,
               timeout_s=60)
    return process
