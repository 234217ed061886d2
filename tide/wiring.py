"""What several entry points build the same way: the engine service, and the Redis job store with its dispatcher."""
from __future__ import annotations

from tide.options import UsageError


def engine_service(model: str, dtype: str, **config):
    """An `EngineService` around a freshly loaded engine; options left as None take the engine's defaults."""
    from tide.engine import EngineConfig, LLMEngine
    from tide.tuned_defaults import tuned_options
    from tide.workers.engine_service import EngineService

    options = {k: v for k, v in config.items() if v is not None}
    options = {**tuned_options(model, config), **options}  # what `tide tune` chose, unless given
    try:
        engine = LLMEngine(EngineConfig(model=model, dtype=dtype, **options))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"cannot load model {model!r}: {exc}") from exc
    return EngineService(engine, fingerprint=fingerprint_of(engine.config))


def fingerprint_of(config) -> str:
    """OpenAI's `system_fingerprint` for an engine built from `config`: its model, the dtype it runs in, its
    quantization and Tide's version, hashed (outputs may change when any of them does)."""
    from importlib import metadata

    from tide.engine.startup import pick_device, pick_dtype
    from tide.jobs.openai_output import system_fingerprint

    dtype = str(pick_dtype(config.dtype, pick_device(config.device))).removeprefix("torch.")
    try:
        version = metadata.version("tide")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return system_fingerprint(config.model, dtype, config.quantization, version)


def chat_template_of(model: str) -> str | None:
    """The chat template of `model` as this machine resolves the name; None when only the workers know it."""
    try:
        from tide.engine.loader import load_tokenizer, resolve_model

        return getattr(load_tokenizer(resolve_model(model)), "chat_template", None)
    except Exception:  # a served name that only the workers map to a directory
        return None


def connect(redis_url: str):
    """(RedisJobStore, CeleryDispatcher) for queued jobs; raises StoreUnavailable when Redis cannot be reached."""
    from tide.jobs.store import RedisJobStore
    from tide.workers.celery_app import make_app
    from tide.workers.dispatch import CeleryDispatcher

    store = RedisJobStore.from_url(redis_url)
    return store, CeleryDispatcher(make_app(redis_url))
