"""Where the lm-eval backend's jobs run, chosen as the other entry points choose: through Redis to the workers when a
Redis URL is given (or TIDE_REDIS_URL is set), through a Tide API with a URL and key (TIDE_API_URL, TIDE_API_KEY),
else in this process around an engine of its own (`tide run`'s pipeline, nothing else to start)."""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from tide.jobs.storage import StorageConfig
from tide.lmeval.transport import ApiRunner, JobRunner, SpecRunner
from tide.settings import Settings

logger = logging.getLogger("tide.lmeval")


@dataclass
class Backend:
    """A runner for the jobs, the tokenizer that turns lm-eval's text into tokens, and the longest sequence the
    engine takes (None when only the workers know it). `close` releases what was started for it."""

    runner: JobRunner
    tokenizer: Any
    max_seq_tokens: int | None = None
    description: str = ""
    _closers: list = field(default_factory=list)

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()


def remote_target(settings: Settings, redis_url: str | None, api_url: str | None, api_key: str | None
                  ) -> tuple[str, str] | None:
    """("redis", url) or ("api", url) when the jobs go elsewhere, from the model arguments or the settings."""
    if redis_url:
        return "redis", redis_url
    if api_url:
        return "api", api_url
    if "redis_url" in settings.model_fields_set:
        return "redis", settings.redis_url
    if settings.api_url:
        return "api", settings.api_url
    return None


def open_backend(target: tuple[str, str] | None, model: str, dtype: str, tokenizer: str | None, api_key: str | None,
                 settings: Settings, shard_rows: int, timeout_s: float | None,
                 engine_options: dict[str, Any]) -> Backend:
    """This process's engine when `target` is None, else the workers through Redis or the API."""
    if target is None:
        return embedded(model, dtype, shard_rows, engine_options)
    engine_options = {k: v for k, v in engine_options.items() if k != "device"}  # lm-eval always passes a device
    if engine_options:
        raise ValueError(f"engine options {', '.join(sorted(engine_options))} only apply to an engine in this "
                         f"process; the workers' engines are configured where they run")
    kind, url = target
    if kind == "redis":
        return queued(model, local_tokenizer(tokenizer or model), settings, url, shard_rows, timeout_s)
    return through_api(model, local_tokenizer(tokenizer or model), url, api_key, timeout_s)


def embedded(model: str, dtype: str, shard_rows: int, engine_options: dict[str, Any]) -> Backend:
    """An engine in this process; each job's files live in a temporary directory removed on close."""
    from tide.jobs.evals.runner import EmbeddedExecutor
    from tide.wiring import engine_service

    service = engine_service(model, dtype, **engine_options)
    engine = service.engine
    workdir = tempfile.mkdtemp(prefix="tide-lm-eval-")
    executor = EmbeddedExecutor(service, StorageConfig(), 0.0, engine.tokenizer.chat_template, show_progress=True)
    backend = Backend(SpecRunner(executor, StorageConfig(), workdir, model, shard_rows), engine.tokenizer,
                      engine.max_seq_tokens, f"in this process ({engine.config.dtype})")
    backend._closers += [service.close, lambda: shutil.rmtree(workdir, ignore_errors=True)]
    return backend


def queued(model: str, tokenizer: Any, settings: Settings, redis_url: str, shard_rows: int,
           timeout_s: float | None) -> Backend:
    """The workers serving `model`, through Redis; job files under TIDE_STORAGE/lm-eval (the workers read them)."""
    from tide.jobs.evals.runner import QueuedExecutor
    from tide.wiring import chat_template_of, connect

    storage = settings.storage_config()
    store, dispatcher = connect(redis_url)
    executor = QueuedExecutor(store, dispatcher, storage, chat_template_of, timeout_s, show_progress=True)
    workdir = settings.storage.rstrip("/") + "/lm-eval"
    return Backend(SpecRunner(executor, storage, workdir, model, shard_rows), tokenizer,
                   description=f"on the workers through {redis_url}")


def through_api(model: str, tokenizer: Any, api_url: str, api_key: str | None, timeout_s: float | None) -> Backend:
    if not api_key:
        raise ValueError(f"the Tide API at {api_url} needs a key: pass api_key=... or set TIDE_API_KEY")
    return Backend(ApiRunner(api_url, api_key, model, timeout_s=timeout_s), tokenizer,
                   description=f"through the Tide API at {api_url}")


def local_tokenizer(name: str):
    """The tokenizer of `name` (an alias, HF directory or GGUF file) as this machine resolves it."""
    from tide.engine.loader import load_tokenizer, resolve_model

    try:
        return load_tokenizer(resolve_model(name))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the tokenizer of {name!r} here ({exc}); pass tokenizer=<alias or HF "
                         f"directory with the served model's tokenizer> in model_args") from exc
