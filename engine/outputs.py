"""What the engine hands back for each finished request."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """Log-probability of the sampled token, and of the top alternatives when asked for."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class CompletionOutput:
    """One sample (of `n`) for a request."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort" | "error"
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    logprobs: list[TokenLogprob] | None = None
    cumulative_logprob: float = 0.0


@dataclass
class RequestMetrics:
    """Timings in seconds (monotonic clock) and token counts for one request."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    spec_proposed_tokens: int = 0  # draft tokens the target verified for this request (speculative decoding)
    spec_accepted_tokens: int = 0

    @property
    def queue_time(self) -> float | None:
        return None if self.first_scheduled_time is None else self.first_scheduled_time - self.arrival_time

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time

    @property
    def e2e_latency(self) -> float | None:
        return None if self.finished_time is None else self.finished_time - self.arrival_time

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first one."""
        if self.finished_time is None or self.first_token_time is None or self.completion_tokens < 2:
            return None
        return (self.finished_time - self.first_token_time) / (self.completion_tokens - 1)


@dataclass
class RequestOutput:
    """A finished request: its `n` completions, metrics, and an error message when it failed alone."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    metrics: RequestMetrics
    error: str | None = None
    error_code: str | None = None  # what kind of error, where the engine knows (e.g. invalid_guided)
    # one entry per prompt token when `prompt_logprobs` was asked: None where nothing was scored (the first token,
    # those before `prompt_logprobs_start`)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def text(self) -> str:
        return self.outputs[0].text if self.outputs else ""

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids if self.outputs else []

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason if self.outputs else "error"
