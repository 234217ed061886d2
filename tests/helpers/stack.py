"""`tide stack up` for a test module: the real processes, their exports and pids, and `tide stack down` after."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.services import tide
from tide.workers.processes import free_port


@dataclass
class Stack:
    state: Path
    env: dict[str, str]
    up_args: list[str]
    exports: dict[str, str]
    api_url: str
    pids: dict[str, int]  # as `tide stack up` recorded them

    def pids_now(self) -> dict[str, int]:
        return recorded_pids(self.state)


def recorded_pids(state: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}


@contextlib.contextmanager
def running_stack(state: Path, env: dict[str, str], model_dir: Path, served: str, *extra: str,
                  worker_args: str = "--dtype float32 --max-num-seqs 32") -> Iterator[Stack]:
    """A stack under `state` serving `model_dir` as `served`; `extra` goes to `tide stack up` (e.g. --s3)."""
    port = free_port()
    up_args = ["stack", "up", "--state-dir", str(state), "--model", str(model_dir), "--served-name", served,
               "--api-port", str(port), "--redis-port", str(free_port()), *extra, "--worker-args", worker_args]
    result = tide(env, *up_args, timeout=400)
    try:
        assert result.returncode == 0, result.stderr + _log(state / "logs" / "api.log")
        exports = dict(line.removeprefix("export ").split("=", 1) for line in result.stdout.splitlines()
                       if line.startswith("export "))
        yield Stack(state, env, up_args, exports, f"http://127.0.0.1:{port}", recorded_pids(state))
    finally:
        down = tide(env, "stack", "down", "--state-dir", str(state), timeout=400)
        assert down.returncode == 0, down.stderr


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
