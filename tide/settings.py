"""Every setting of every entry point (CLI, API, worker, scheduler) in one model, read from TIDE_* variables and `.env`.

Command-line flags override these per run; the README's settings table is checked against this model by a test.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tide.key_policies import HASH_PREFIX, KeyPolicy, hash_key, owner_of, policies_by_owner, policy_for

if TYPE_CHECKING:
    from tide.jobs.redaction import Redactor
    from tide.jobs.storage import StorageConfig

DEV_API_KEY = "tide-dev-key"
__all__ = ["DEV_API_KEY", "Settings", "get_settings", "hash_key"]


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
    task: Literal["auto", "generate", "embed"] = Field("auto", description="what a worker's engine serves: auto "
                                                       "(embed for an encoder or sentence-transformers model, else "
                                                       "generate), generate, or embed (a decoder model's pooled "
                                                       "hidden states)")
    pooling: Literal["mean", "cls", "last", "max"] | None = Field(None, description="an embedding model's pooling, "
                                                                  "in place of its own (required for a decoder model "
                                                                  "without sentence-transformers files)")
    matryoshka: bool = Field(False, description="the embedding model was trained for shorter vectors: rows may ask "
                             "for fewer `dimensions`")
    max_attempts: int = Field(3, ge=1, description="runs of one shard before its rows fail")
    shard_rows: int = Field(256, ge=1, description="rows per shard for jobs that do not say")
    cache_dir: str | None = Field(None, description="converted models (models/; a conversion whose source file "
                                  "changed or is gone is removed when another is written), built kernels (kernels/) "
                                  "and tuned defaults (tuned/); default ~/.cache/tide")
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

    # The OpenAI-compatible API: model names, batch limits, what each key may reach (`tide api`).
    model_aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict, description="model names requests may use for served models: a JSON object or "
        "name=target pairs, comma-separated (e.g. gpt-4o-mini=smollm2-135m)")
    accept_unserved: bool = Field(False, description="accept batches and jobs naming a model no live worker serves "
                                  "(they wait for one, and still expire on their completion window); otherwise they "
                                  "are refused at create")
    batch_max_requests: int = Field(50_000, ge=1, description="most requests one batch file may hold (OpenAI's "
                                    "limit); a file with more fails validation")
    batch_max_file_bytes: int = Field(200 * 2**20, ge=1, description="largest batch input file a batch may be "
                                      "created from (OpenAI's limit)")
    api_key_policies: dict[str, KeyPolicy] = Field(
        default_factory=dict, description="JSON object: per API key (plain, sha256:<hex>, or * for every other "
        "key) the s3:// prefixes its jobs may read and write, its batch webhook endpoints and signing secret, and "
        "the eval suites its dashboard shows: {read, write, webhooks, webhook_secret, evals}")

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _aliases(cls, value: object) -> object:
        from tide.jobs.models import parse_aliases

        return parse_aliases(value) if isinstance(value, (str, dict)) or value is None else value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("lora_adapters")
    @classmethod
    def _check_adapters(cls, value: str | None) -> str | None:
        for pair in (value or "").split(","):
            name, _, source = pair.partition("=")
            if pair.strip() and not (name.strip() and source.strip()):
                raise ValueError(f"{pair!r} is not NAME=SOURCE (an adapter name, '=', a directory or s3:// prefix)")
        return value

    def key_hashes(self) -> frozenset[str]:
        """The configured keys as sha256 hex digests; plain keys are hashed here and not kept."""
        return frozenset(key[len(HASH_PREFIX):].lower() if key.startswith(HASH_PREFIX) else hash_key(key)
                         for key in self.api_keys)

    def webhook_config(self):
        """The webhook signing, retry and address settings every courier uses (`jobs.webhooks.WebhookConfig`)."""
        from tide.jobs.webhooks.courier import WebhookConfig
        from tide.jobs.webhooks.signing import split_secrets

        # Each configured key's owner takes its policy's secret, its own or the '*' entry's, as its events go to
        # that same policy's endpoints.
        by_owner = self.key_policies()
        policies = {owner: policy_for(owner, by_owner) for owner in map(owner_of, self.api_keys)}
        key_secrets = {owner: split_secrets(policy.webhook_secret) for owner, policy in policies.items()
                       if policy.webhook_secret}
        return WebhookConfig(secrets=split_secrets(self.webhook_secret), key_secrets=key_secrets,
                             schedule=self.webhook_retry_schedule, allow_private=self.webhook_allow_private,
                             timeout_s=self.webhook_timeout_s)

    def key_policies(self) -> dict[str, KeyPolicy]:
        """`api_key_policies` by owner name (and '*'), the keys themselves not kept."""
        return policies_by_owner(self.api_key_policies)

    def redactor(self, private_prefixes: tuple[str, ...] = ()) -> Redactor:
        """The one filter error messages and log lines pass through: every secret this process was given, URL
        passwords (a Redis URL's among them) and `private_prefixes` (the service's own storage) masked."""
        from tide.jobs.redaction import Redactor

        secrets = [*self.api_keys, *(self.webhook_secret or "").split(), os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                   *(s for p in self.api_key_policies.values() for s in (p.webhook_secret or "").split())]
        return Redactor(secrets=[s for s in secrets if not s.startswith(HASH_PREFIX)],
                        private_prefixes=private_prefixes)

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

    # LoRA adapters the worker's engine serves (`tide worker`, `tide run`); rows name them with "lora".
    lora_adapters: str | None = Field(None, description="adapters by name: comma-separated NAME=SOURCE pairs, SOURCE "
                                      "a PEFT adapter directory or s3:// prefix")
    max_loras: int = Field(8, ge=1, description="LoRA adapters a worker keeps resident; others load on demand and "
                           "the least recently used is evicted")
    max_lora_rank: int = Field(16, ge=1, description="the highest LoRA rank a worker accepts (every adapter slot "
                               "is sized for it)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()
