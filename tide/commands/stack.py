"""`tide stack up|down|status`: the whole service on one machine as local processes, without Docker.

redis-server (AOF on), storage (a directory under the state directory, or an S3 endpoint with --s3), the API, N
workers and the scheduler (`tide beat`: eval schedules from TIDE_EVALS_CONFIG or --evals, webhook delivery). Pids, logs, Redis' append-only file and the stored files live under the state directory, so `up` after a
reboot finds the same files and jobs. `up` is idempotent: it starts only what is not running.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from tide.options import UsageError
from tide.settings import DEV_API_KEY, Settings
from tide.workers.processes import (
    start_api,
    start_beat,
    start_redis,
    start_s3,
    start_worker,
)

STOP_ORDER = ("beat", "worker", "api", "s3", "redis")  # consumers first, so nothing in flight loses its store
BUCKET = "tide"


def add_parser(sub, settings: Settings) -> None:
    p = sub.add_parser("stack", help="run redis, storage, the API and workers as local processes")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start whatever is not running and print the export lines")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--s3", action="store_true", help="an S3 endpoint (MinIO if on PATH, else moto) for storage")
    up.add_argument("--model", default=settings.model, help="model the workers load")
    up.add_argument("--served-name", default=None, help="model name batches and jobs use (default --model)")
    up.add_argument("--api-port", type=int, default=settings.api_port)
    up.add_argument("--redis-port", type=int, default=6379)
    up.add_argument("--s3-port", type=int, default=9000)
    up.add_argument("--worker-args", default="", help="extra `tide worker` arguments, e.g. '--dtype float32'")
    up.add_argument("--evals", default=settings.evals_config, help="eval suites file the scheduler runs")
    for action in (up, actions.add_parser("down", help="stop everything the stack started"),
                   actions.add_parser("status", help="show what runs")):
        action.add_argument("--state-dir", type=Path, default=Path(os.environ.get("TIDE_STACK_DIR", ".tide-stack")),
                            help="pids, logs, Redis data and stored files (default ./.tide-stack)")
    p.set_defaults(handler=lambda args: {"up": up_cmd, "down": down_cmd, "status": status_cmd}[args.action](
        args, settings))


def up_cmd(args: argparse.Namespace, settings: Settings) -> int:
    state = args.state_dir.resolve()
    for sub in ("logs", "pids", "redis", "storage"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    config = _config(state, args)
    env = _env(config, settings)
    if not _alive(state, "redis"):
        process, _ = start_redis(state / "redis", config["redis_port"], aof=True, log=state / "logs/redis.log",
                                 detach=True)
        _record(state, "redis", process.pid)
    if config["s3"] and not _alive(state, "s3"):
        process, url, kind = start_s3(state / "s3", config["s3_port"], log=state / "logs/s3.log", detach=True)
        _record(state, "s3", process.pid)
        if kind == "moto":
            print("storage: moto's S3 server keeps objects in memory; they are lost when the stack stops "
                  "(put `minio` on PATH to keep them on disk)", file=sys.stderr)
        _make_bucket(env)
    if not _alive(state, "api"):
        _record(state, "api", start_api(env, config["api_port"], state / "logs/api.log", detach=True).pid)
    for i in range(config["workers"]):
        name = f"worker-{i}"
        if not _alive(state, name):
            process = start_worker(config["model"], config["served"], env, state / f"logs/{name}.log",
                                   extra=tuple(config["worker_args"].split()), detach=True)
            _record(state, name, process.pid)
    if not _alive(state, "beat"):
        extra = ("--config", config["evals"]) if config["evals"] else ()
        _record(state, "beat", start_beat(env, state / "logs/beat.log", detach=True, extra=extra).pid)
    print(_exports(config, settings))
    return 0


def _config(state: Path, args: argparse.Namespace) -> dict:
    """The stack's settings: fixed when it first starts, so a later `up` reaches the same ports and storage."""
    path = state / "stack.json"
    if path.exists() and any(_alive(state, name) for name in _recorded(state)):
        return json.loads(path.read_text())
    config = {"state": str(state), "workers": args.workers, "s3": args.s3, "model": args.model,
              "served": args.served_name or args.model, "api_port": args.api_port, "redis_port": args.redis_port,
              "s3_port": args.s3_port, "worker_args": args.worker_args,
              "evals": str(Path(args.evals).resolve()) if args.evals else None}
    path.write_text(json.dumps(config, indent=2))
    return config


def _env(config: dict, settings: Settings) -> dict[str, str]:
    env = {**os.environ, "TIDE_REDIS_URL": f"redis://127.0.0.1:{config['redis_port']}/0",
           "TIDE_MODEL": config["served"], "TIDE_STORAGE": _storage(config)}
    if not settings.api_keys:
        env["TIDE_API_KEYS"] = DEV_API_KEY
        if not settings.api_key_policies:  # the one development key sees every eval suite on its dashboard
            env["TIDE_API_KEY_POLICIES"] = json.dumps({DEV_API_KEY: {"evals": ["*"]}})
    if config["s3"]:
        env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{config['s3_port']}", AWS_ACCESS_KEY_ID="tide",
                   AWS_SECRET_ACCESS_KEY="tide-secret", AWS_DEFAULT_REGION="us-east-1")
    return env


def _storage(config: dict) -> str:
    return f"s3://{BUCKET}/stack" if config["s3"] else str(Path(config["state"]) / "storage")


def _make_bucket(env: dict[str, str]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)


def _exports(config: dict, settings: Settings) -> str:
    lines = [f"export TIDE_API_URL=http://127.0.0.1:{config['api_port']}/v1",
             f"export TIDE_REDIS_URL=redis://127.0.0.1:{config['redis_port']}/0",
             f"export TIDE_STORAGE={_storage(config)}"]
    if not settings.api_keys:
        lines.append(f"export TIDE_API_KEY={DEV_API_KEY}")
    if config["s3"]:
        lines += [f"export AWS_ENDPOINT_URL=http://127.0.0.1:{config['s3_port']}", "export AWS_ACCESS_KEY_ID=tide",
                  "export AWS_SECRET_ACCESS_KEY=tide-secret", "export AWS_DEFAULT_REGION=us-east-1"]
    return "\n".join(lines)


def down_cmd(args: argparse.Namespace, settings: Settings) -> int:
    state = args.state_dir.resolve()
    names = _recorded(state)
    ordered = sorted(names, key=lambda n: STOP_ORDER.index(n.split("-")[0]))
    for name in ordered:
        _stop(state, name)
    print(f"stopped {', '.join(ordered) or 'nothing'}")
    return 0


def status_cmd(args: argparse.Namespace, settings: Settings) -> int:
    state = args.state_dir.resolve()
    names = _recorded(state)
    if not names:
        raise UsageError(f"no stack under {state}; start one with `tide stack up`")
    for name in names:
        print(f"{name:<10} {'running' if _alive(state, name) else 'stopped'} (pid {_pid(state, name)})")
    return 0


def _record(state: Path, name: str, pid: int) -> None:
    (state / "pids" / f"{name}.pid").write_text(str(pid))


def _recorded(state: Path) -> list[str]:
    return sorted(p.stem for p in (state / "pids").glob("*.pid")) if (state / "pids").is_dir() else []


def _pid(state: Path, name: str) -> int | None:
    path = state / "pids" / f"{name}.pid"
    return int(path.read_text()) if path.exists() else None


def _alive(state: Path, name: str) -> bool:
    pid = _pid(state, name)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _stop(state: Path, name: str, timeout_s: float = 60) -> None:
    """SIGTERM the process group (workers finish in-flight shards), SIGKILL it if it lingers."""
    pid = _pid(state, name)
    if pid is not None and _alive(state, name):
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(state, name) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(state, name):
            os.killpg(pid, signal.SIGKILL)
    (state / "pids" / f"{name}.pid").unlink(missing_ok=True)
