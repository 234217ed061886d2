"""What a user asks for (`JobSpec`) and what travels on the queue (`ShardTask`): pydantic models, JSON on the wire."""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tide.engine.embeddings import EMBED_TASK, GENERATE_TASK
from tide.engine.sampling_params import SamplingParams
from tide.jobs import keys
from tide.jobs.endpoints import EMBEDDINGS_URL, check_endpoint
from tide.jobs.webhooks.delivery import http_url

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str | int | float) -> float:
    """'24h', '30m', '90s', '2d' or a number of seconds -> seconds."""
    if isinstance(window, (int, float)):
        seconds = float(window)
    else:
        match = _WINDOW.match(window)
        if match is None:
            raise ValueError(f"completion_window {window!r} is not a duration like '24h', '30m' or '90s'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"completion_window must be positive, got {window!r}")
    return seconds


class ColumnMap(BaseModel):
    """Which Parquet columns hold the prompt text, the chat messages, the text to embed and the row id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = "prompt"
    messages: str = "messages"
    input: str = "input"
    id: str = "id"

    def fields(self, task: str) -> dict[str, str]:
        """File column -> row field, for a job of `task`: the text columns it reads, and the id."""
        text = {self.input: "input"} if task == EMBED_TASK else {self.prompt: "prompt", self.messages: "messages"}
        return {**text, self.id: "id"}


class JobSpec(BaseModel):
    """A batch job: where the prompts are, how to sample them, where the results go."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(min_length=1, description="local path or s3://bucket/key of a JSONL or Parquet file")
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    model: str = "smollm2-135m"
    sampling: dict[str, Any] = Field(default_factory=dict, description="job-level SamplingParams defaults")
    columns: ColumnMap = Field(default_factory=ColumnMap)
    output: str = Field(min_length=1, description="local directory or s3://bucket/prefix for results")
    priority: int = Field(0, ge=0, le=9, description="higher runs first")
    metadata: dict[str, str] = Field(default_factory=dict)
    webhook_url: str | None = None
    completion_window: str = "24h"
    idempotency_key: str | None = Field(None, min_length=1, max_length=256)
    shard_rows: int = Field(256, ge=1, le=1_000_000, description="rows per shard: a few minutes of work")
    endpoint: str | None = Field(
        None, description="an OpenAI batch: every row is a batch line to this endpoint (/v1/chat/completions, "
        "/v1/completions, /v1/responses or /v1/embeddings), a file with invalid lines fails at validation, and the "
        "results are also written as OpenAI output and error JSONL")
    requested_model: str | None = Field(None, description="an OpenAI batch: the model name its lines give, when an "
                                        "alias maps it to `model`; lines may name either")
    max_requests: int | None = Field(None, ge=1, description="an OpenAI batch: a file with more rows fails at "
                                     "validation")
    task: Literal["generate", "embed"] = Field(
        GENERATE_TASK, description="what the rows ask for: completions (prompt or messages rows) or embeddings "
        "(input rows); the /v1/embeddings endpoint implies embed")

    def line_models(self) -> frozenset[str]:
        """The names an OpenAI batch line's `body.model` may give (empty for other jobs: rows name no model)."""
        if self.endpoint is None:
            return frozenset()
        return frozenset({self.model} | ({self.requested_model} if self.requested_model else set()))

    @field_validator("endpoint")
    @classmethod
    def _endpoint_served(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint(value)

    @model_validator(mode="before")
    @classmethod
    def _task_of_endpoint(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("task") is None and data.get("endpoint") == EMBEDDINGS_URL:
            return {**data, "task": EMBED_TASK}
        return data

    @model_validator(mode="after")
    def _task_fits_endpoint(self) -> "JobSpec":
        if self.endpoint is not None and (self.endpoint == EMBEDDINGS_URL) != (self.task == EMBED_TASK):
            raise ValueError(f"task {self.task} does not fit endpoint {self.endpoint}: /v1/embeddings batches embed, "
                             "the others generate")
        return self

    @field_validator("sampling")
    @classmethod
    def _sampling_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        SamplingParams(**value)  # raises a ValidationError naming the bad field
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_small(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 16:
            raise ValueError(f"metadata holds at most 16 keys, got {len(value)}")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError(f"metadata key {key[:64]!r}: keys hold at most 64 characters, values 512")
        return value

    @field_validator("completion_window")
    @classmethod
    def _window_valid(cls, value: str) -> str:
        window_seconds(value)
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_http(cls, value: str | None) -> str | None:
        return http_url("webhook_url", value)


class ShardPlan(BaseModel):
    """One shard: a row range of the input. For JSONL `start`/`end` are byte offsets, for Parquet row indices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    first_row: int = Field(ge=0)
    num_rows: int = Field(ge=0)
    duplicate_rows: list[int] = Field(default_factory=list, description="rows whose id repeats an earlier row's")


class ShardTask(BaseModel):
    """The payload of one `tide.run_shard` task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    spec: JobSpec
    format: Literal["jsonl", "parquet"]
    shard: ShardPlan
    output_prefix: str
    deadline: float = Field(description="unix time after which the shard expires")


def queue_for(model: str) -> str:
    """The Celery queue of a served model name (`tide.<model>`), made safe for paths used as names."""
    return keys.QUEUE_PREFIX + re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")
