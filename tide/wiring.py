"""What several entry points build the same way: the engine service, and the Redis job store with its dispatcher."""
from __future__ import annotations

import hashlib
import os
import tempfile
from functools import partial
from pathlib import Path

from tide.options import UsageError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # a PEFT adapter, as engine/lora reads it


def engine_service(model: str, dtype: str, task: str = "auto", storage=None, **config):
    """An `EngineService` around a freshly loaded engine: the embedding engine for a model that embeds (its files
    say so, or `task` embed), else the generation engine; options left as None take the engine's defaults.

    With `storage` (a `StorageConfig`) LoRA adapters are read through it: s3:// prefixes, local directories confined
    like inputs."""
    from tide.workers.engine_service import EngineService

    options = {k: v for k, v in config.items() if v is not None}
    if storage is not None:
        options["lora_fetch"] = partial(fetch_adapter, storage=storage)
    try:
        embeds = _embeds(model, task, options)
        engine = _embedding_engine(model, dtype, options) if embeds else _generation_engine(model, dtype, options)
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
    quantization = getattr(config, "quantization", "none")  # an embedding engine's EncoderConfig has none
    return system_fingerprint(config.model, dtype, quantization, version)


# What only the embedding engine takes, and what only the generation engine does (at a value other than its off).
_EMBEDDING_OPTIONS = {"num_threads", "max_num_seqs", "max_num_batched_tokens", "pooling", "matryoshka"}
_GENERATION_ONLY = {"quantization": "none", "tensor_parallel_size": 1, "offload_max_resident_layers": None,
                    "speculative": "off", "kv_cache_bytes": None, "lora_adapters": {}}


def _embeds(model: str, task: str, options: dict) -> bool:
    from tide.engine.embeddings import EMBED_TASK
    from tide.engine.encoder.task import model_task
    from tide.engine.loader import resolve_model

    embeds = task == EMBED_TASK or (task == "auto" and model_task(resolve_model(model)) == EMBED_TASK)
    if not embeds and (options.get("pooling") or options.get("matryoshka")):
        raise ValueError("pooling and matryoshka apply to embedding models; this one generates (task embed makes a "
                         "decoder model embed)")
    return embeds


def _embedding_engine(model: str, dtype: str, options: dict):
    from tide.engine.encoder.config import EncoderConfig
    from tide.engine.encoder.engine import EmbeddingEngine

    unfit = sorted(k for k, off in _GENERATION_ONLY.items() if options.get(k, off) != off)
    if unfit:
        raise ValueError(f"{', '.join(unfit)} apply to generation models; {model} embeds")
    return EmbeddingEngine(EncoderConfig(model=model, dtype=dtype,
                                         **{k: v for k, v in options.items() if k in _EMBEDDING_OPTIONS}))


def _generation_engine(model: str, dtype: str, options: dict):
    from tide.engine import EngineConfig, LLMEngine
    from tide.tuned_defaults import tuned_options

    options = {k: v for k, v in options.items() if k not in ("pooling", "matryoshka")}
    options = {**tuned_options(model, {k: v for k, v in options.items() if k != "lora_fetch"}), **options}  # what `tide tune` chose, unless given
    return LLMEngine(EngineConfig(model=model, dtype=dtype, **options))


def fetch_adapter(source: str, storage) -> Path:
    """A LoRA adapter's local directory: an s3:// prefix downloaded (again on each load, so a changed adapter is
    seen) into one temporary directory per prefix, a local directory as it is (under `storage.local_roots` when
    those are set). Raises ValueError naming the source."""
    from tide.jobs.storage import StorageError, confined, resolve

    try:
        if not source.startswith("s3://"):
            return confined(Path(source), storage.local_roots)
        key = hashlib.sha256(source.encode()).hexdigest()[:16]
        target = Path(tempfile.gettempdir()) / "tide-lora" / key
        target.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:
            part = target / f"{name}.{os.getpid()}.part"
            part.write_bytes(resolve(f"{source.rstrip('/')}/{name}", storage).read_bytes())
            os.replace(part, target / name)
        return target
    except StorageError as exc:
        raise ValueError(f"LoRA adapter source {source!r}: {exc}") from exc


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
