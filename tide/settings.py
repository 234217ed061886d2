"""Every setting of every entry point (CLI, API, worker, scheduler) in one model, read from TIDE_* variables and `.env`.

Command-line flags override these per run; the README's settings table is checked against this model by a test.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from tide.jobs.storage import StorageConfig

DEV_API_KEY = "tide-dev-key"
HASH_PREFIX = "sha256:"


class Settings(BaseSettings):
    """Tide's configuration. Each field is the environment variable `TIDE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="TIDE_", env_file=".env", env_file_encoding="utf-8",
                                      extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="job state store and Celery broker")
    storage: str = Field("./tide-data", description="where uploaded files and default results live: a local "
                         "directory or s3://bucket/prefix")
    model: str = Field("smollm2-135m", description="model a worker serves and batches use when lines name none")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated bearer keys, plain or as sha256:<hex> of the key; "
        "empty means the API refuses every request (tide stack sets tide-dev-key)")
    api_host: str = Field("127.0.0.1", description="address `tide api` listens on")
    api_port: int = Field(8000, ge=1, le=65535, description="port `tide api` listens on")
    max_upload_bytes: int = Field(2 * 2**30, ge=1, description="largest file `POST /v1/files` accepts")
    max_request_bytes: int = Field(2**20, ge=1024, description="largest JSON request body")
    webhook_secret: str | None = Field(None, description="signing secret for completion webhooks")
    concurrency: int = Field(2, ge=1, description="shards a worker holds at once, all feeding its one engine")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="worker engine dtype")
    quantization: Literal["none", "int8"] = Field("none", description="worker engine weights: none, or int8 "
                                                  "decoder projections with per-output-channel scales")
    threads: int | None = Field(None, ge=1, description="worker torch compute threads (default: all cores)")
    max_num_seqs: int | None = Field(None, ge=1, description="worker engine sequence cap (default: engine's)")
    kv_cache_bytes: int | None = Field(None, ge=1, description="worker KV cache budget (default: a share of RAM)")
    tensor_parallel_size: int = Field(1, ge=1, description="processes one worker splits its model over (one per GPU, "
                                      "the engine on rank 0; heads must divide evenly)")
    offload_max_resident_layers: int | None = Field(None, ge=1, description="stream the worker's decoder layers in "
                                                    "from host memory, at most this many on the device at once "
                                                    "(default: all resident)")
    max_attempts: int = Field(3, ge=1, description="runs of one shard before its rows fail")
    shard_rows: int = Field(256, ge=1, description="rows per shard for jobs that do not say")
    cache_dir: str | None = Field(None, description="converted models and built kernels (default ~/.cache/tide)")
    log_level: str = Field("INFO", description="log level of the worker, API and scheduler")
    lease_ttl_s: float = Field(30.0, gt=0, description="a running shard's lease lasts this long unless its worker "
                               "renews it; a dead worker's shards run again after it lapses")
    lease_renew_s: float = Field(5.0, gt=0, description="seconds between a worker's lease renewals (well under "
                                 "TIDE_LEASE_TTL_S)")
    reaper_interval_s: float = Field(5.0, gt=0, description="seconds between reaper sweeps (lapsed leases, "
                                     "expired jobs) in every worker and in `tide beat`")
    storage_retry_s: float = Field(120.0, ge=0, description="how long S3 reads and writes keep retrying through "
                                   "an outage (backoff with jitter) before the attempt fails")
    local_roots: str | None = Field(None, description="comma-separated directories that local-path inputs and "
                                    "outputs must lie under (`..` and symlinks resolved); empty allows any path. Set "
                                    "it when Tide runs as a service")
    price_per_worker_hour: float = Field(0.0, ge=0, description="what one worker costs per hour: with the worker-seconds a job used, its cost in summary.json and report.html")
    log_format: Literal["text", "json"] = Field("text", description="log lines of the worker, API and scheduler: text, or one JSON object per line with job_id and shard_id")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    def key_hashes(self) -> frozenset[str]:
        """The configured keys as sha256 hex digests; plain keys are hashed here and not kept."""
        return frozenset(key[len(HASH_PREFIX):].lower() if key.startswith(HASH_PREFIX) else hash_key(key)
                         for key in self.api_keys)

    def webhook_config(self):
        """The webhook signing, retry and address settings every courier uses (`jobs.webhooks.WebhookConfig`)."""
        from tide.jobs.webhooks.courier import WebhookConfig
        from tide.jobs.webhooks.signing import split_secrets

        return WebhookConfig(secrets=split_secrets(self.webhook_secret), schedule=self.webhook_retry_schedule,
                             allow_private=self.webhook_allow_private, timeout_s=self.webhook_timeout_s)

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        from tide.jobs.webhooks.courier import parse_schedule

        parse_schedule(value)  # refused when Settings load, not when the first webhook is due
        return value

    def storage_config(self) -> StorageConfig:
        """The storage settings as the job code takes them (`jobs.storage.StorageConfig`, passed down explicitly)."""
        from tide.jobs.storage import StorageConfig

        roots = [r.strip() for r in (self.local_roots or "").split(",") if r.strip()]
        if roots and "://" not in self.storage:
            roots.append(self.storage)  # the service's own storage is always usable
        return StorageConfig(local_roots=tuple(roots), retry_s=self.storage_retry_s)

    # Evals and webhooks (`tide eval`, `tide beat`, `tide webhooks`).
    evals_config: str | None = Field(None, description="suites file `tide beat` and `tide eval` read when "
                                     "--config is not given")
    beat_grace_s: float = Field(3600.0, ge=0, description="a scheduled eval run missed by at most this many "
                                "seconds runs once when `tide beat` starts")
    api_url: str | None = Field(None, description="a Tide API (`tide stack up` exports it) that `tide lm-eval` sends "
                                "its jobs to when TIDE_REDIS_URL is not set")
    api_key: str | None = Field(None, description="bearer key `tide lm-eval` sends to TIDE_API_URL")
    webhook_retry_schedule: str = Field("0,5,300,1800,7200,18000,36000,36000", description="seconds before each "
                                        "webhook attempt, comma-separated (Standard Webhooks' schedule)")
    webhook_allow_private: bool = Field(False, description="allow webhook URLs that resolve to loopback, private "
                                        "or link-local addresses")
    webhook_timeout_s: float = Field(15.0, gt=0, description="timeout of one webhook attempt")

    # Speculative decoding of greedy rows in the worker's engine (`tide worker`, `tide run`).
    speculative: Literal["off", "ngram", "draft"] = Field("off", description="off; ngram (drafts looked up in the "
                                                          "prompt and output); draft (a smaller model drafts)")
    num_speculative_tokens: int = Field(4, ge=1, description="draft tokens proposed per sequence and step")
    draft_model: str | None = Field(None, description="draft model for TIDE_SPECULATIVE=draft (alias, HF directory "
                                    "or GGUF file with the served model's tokenizer)")
    spec_ngram_min: int = Field(2, ge=1, description="shortest suffix prompt lookup matches")
    spec_ngram_max: int = Field(4, ge=1, description="longest suffix prompt lookup matches")
    spec_max_running: int = Field(2, ge=0, description="speculate only while at most this many sequences run "
                                  "(above it a step is compute-bound and drafts cost more than they save)")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
