"""A job's state as stored (Redis, or memory for `tide run`): the `Job` document and one `ShardState` per shard."""
from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from tide.jobs.specs import JobSpec


class JobStatus(str, Enum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED)


class ShardStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (ShardStatus.PENDING, ShardStatus.RUNNING)


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0


class SampleError(BaseModel):
    """One row refused at validation, as shown at submit (and in a failed batch's `errors`); `line` is None for an
    error of the whole file."""

    line: int | None
    code: str
    message: str
    param: str | None = None


class AdapterUsage(BaseModel):
    """What one LoRA adapter's rows of a shard used."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ShardProgress(BaseModel):
    """Counts of one shard so far; overwritten while it runs, final once it is terminal."""

    completed: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    spec_proposed_tokens: int = 0  # draft tokens verified for these rows (speculative decoding)
    spec_accepted_tokens: int = 0
    adapters: dict[str, AdapterUsage] = Field(default_factory=dict)  # completed rows by LoRA adapter


class EngineFigures(BaseModel):
    """What a worker's engine reported when a shard finished (running totals of that engine)."""

    mean_batch_occupancy: float = 0.0
    prefix_cache_hit_rate: float = 0.0
    preemptions: int = 0
    busy_time_s: float = 0.0
    generation_tokens: int = 0
    spec_proposed_tokens: int = 0
    spec_accepted_tokens: int = 0


class EngineLoad(BaseModel):
    """What an engine counts at one moment (running totals and KV use), sampled into a shard's time series."""

    engine_steps: int | None = None
    occupancy_sum: float | None = None  # sum over steps of running/max_num_seqs: its delta / steps' delta = mean
    preemptions: int | None = None
    kv_cache_usage: float | None = None  # fraction of KV blocks held by sequences at that moment


class ShardState(BaseModel):
    index: int
    num_rows: int
    status: ShardStatus = ShardStatus.PENDING
    task_id: str | None = None
    worker: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: ShardProgress = Field(default_factory=ShardProgress)
    write_s: float | None = Field(None, description="seconds its parts took to write, once it is done")
    engine: EngineFigures | None = None
    error: str | None = None
    attempt: int | None = Field(None, description="fencing token of the claim that runs it (its attempt number)")
    runs: int = Field(0, description="claims so far; past the attempt cap its rows fail")
    lost: int = Field(0, description="leases that lapsed under it (its worker died or hung)")
    poisoned_rows: list[int] = Field(default_factory=list, description="rows that were in the engine alone "
                                     "when a worker died twice: they fail, the rest run")


class Job(BaseModel):
    """A job as `tide status` shows it. Timestamps are unix seconds, one per status reached."""

    model_config = ConfigDict(use_enum_values=False)

    id: str
    spec: JobSpec
    status: JobStatus = JobStatus.VALIDATING
    created_at: float
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    expires_at: float
    output_prefix: str
    num_shards: int = 0
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    usage: Usage = Field(default_factory=Usage)
    error: str | None = None
    sample_errors: list[SampleError] = Field(default_factory=list, description="the first few invalid rows")
    summary_uri: str | None = None
    owner: str | None = Field(None, description="the API key (owner name) that created it; None from the CLI")
    event_urls: list[str] = Field(default_factory=list, description="endpoints that get its OpenAI-shaped batch "
                                  "events (configured per API key)")

    def moved_to(self, status: JobStatus, now: float, **changes) -> "Job":
        """A copy in `status`, with that status's timestamp set."""
        return self.model_copy(update={"status": status, f"{status.value}_at": now, **changes})


def with_counts(job: Job, shards: list[ShardState]) -> Job:
    """The job with request counts and token usage summed over its shards."""
    completed = sum(s.progress.completed for s in shards)
    failed = sum(s.progress.failed for s in shards)
    usage = Usage(prompt_tokens=sum(s.progress.prompt_tokens for s in shards),
                  completion_tokens=sum(s.progress.completion_tokens for s in shards),
                  cached_prompt_tokens=sum(s.progress.cached_prompt_tokens for s in shards))
    counts = RequestCounts(total=job.request_counts.total, completed=completed, failed=failed)
    return job.model_copy(update={"request_counts": counts, "usage": usage})
