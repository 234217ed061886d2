"""Per-request sampling parameters, validated when a request is built."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tide.engine.decoding.guided_params import GuidedParams


class SamplingParams(BaseModel):
    """How to sample one request's completion(s).

    Validation errors name the offending field, so a bad row in a batch file can be reported precisely.
    `max_tokens=None` means: generate until a stop condition or the model's context is full; `max_tokens=0` scores
    the prompt only (with `prompt_logprobs`) and generates nothing.

    Prompt logprobs (`prompt_logprobs=k`, as vLLM's): the logprob of each prompt token given the ones before it, plus
    its k most likely alternatives, computed during prefill. Tokens before `prompt_logprobs_start` (and the first,
    which nothing predicts) get None, so a context shared by many requests may come from the prefix cache while only
    the tokens after it are scored (engine/prompt_logprobs.py).

    Beam search (`use_beam_search=True`, HF `num_beams` semantics, as vLLM's former `use_beam_search`): `best_of`
    beams (default `n`) advance together and the `n` best finished beams are returned, best first. A beam's score is
    its summed token logprobs divided by (generated tokens, EOS included) ** `length_penalty`; `early_stopping` is
    HF's: True stops once `best_of` beams have finished, False / "never" stop when no running beam can still beat
    the worst of them (estimated at the current length, or for "never" with `length_penalty` > 0 at `max_tokens`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(1, ge=1, le=128)
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_k: int = Field(-1, ge=-1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = None
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(None, ge=0)
    min_tokens: int = Field(0, ge=0)
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    prompt_logprobs: int | None = Field(None, ge=0, le=20)  # logprobs of the prompt's tokens (+ top alternatives)
    prompt_logprobs_start: int = Field(0, ge=0)  # first prompt token scored; earlier ones may come from the cache
    skip_special_tokens: bool = True
    guided: GuidedParams | None = None  # constrain the output to a JSON schema, regex or choice
    use_beam_search: bool = False
    best_of: int | None = Field(None, ge=1, le=128)  # beam width with use_beam_search (default: n)
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False
    speculate: bool = True  # False: never speculate for this request, even on an engine that does (greedy rows only)
    # The LoRA adapter to generate with: a name the engine registers, or an adapter directory (engine/lora/).
    lora: str | None = Field(None, min_length=1, max_length=1024)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: object) -> object:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: list[str]) -> list[str]:
        if any(s == "" for s in value):
            raise ValueError("stop strings must be non-empty")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k_off(cls, value: int) -> int:
        return -1 if value == 0 else value

    @model_validator(mode="after")
    def _min_le_max(self) -> "SamplingParams":
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self

    @model_validator(mode="after")
    def _scoring_options(self) -> "SamplingParams":
        if self.prompt_logprobs is None and self.prompt_logprobs_start:
            raise ValueError("prompt_logprobs_start is only used with prompt_logprobs")
        if self.max_tokens == 0 and (self.n > 1 or self.use_beam_search):
            raise ValueError("max_tokens=0 scores the prompt only: n must be 1, without use_beam_search")
        return self

    @model_validator(mode="after")
    def _beam_search_options(self) -> "SamplingParams":
        check_beam_search_options(self)
        return self

    @property
    def beam_width(self) -> int:
        """Beams kept per step under beam search."""
        return self.best_of or self.n

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


# Options that beam search (a deterministic search over logprobs) cannot honour, with the value that turns each off.
_NOT_WITH_BEAMS = {"top_k": -1, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                   "frequency_penalty": 0.0, "stop": [], "guided": None,
                 "prompt_logprobs": None}
_BEAM_ONLY = {"best_of": None, "length_penalty": 1.0, "early_stopping": False}


def check_beam_search_options(params: SamplingParams) -> None:
    """Raise ValueError naming the first field that conflicts with `use_beam_search` (or needs it)."""
    if not params.use_beam_search:
        for name, off in _BEAM_ONLY.items():
            if getattr(params, name) != off:
                raise ValueError(f"{name} is only used with use_beam_search=true")
        return
    # temperature defaults to 1.0 for sampling: only an explicit non-zero value is a conflict
    if "temperature" in params.model_fields_set and params.temperature != 0.0:
        raise ValueError(f"temperature must be 0 (or unset) with use_beam_search, got {params.temperature}")
    for name, off in _NOT_WITH_BEAMS.items():
        if getattr(params, name) != off:
            raise ValueError(f"{name} cannot be combined with use_beam_search")
    if params.n > params.beam_width:
        raise ValueError(f"n ({params.n}) must not exceed best_of ({params.best_of}), the beam width")
