"""What an embedding request asks for and what comes back: plain data, without torch, shared with the job side."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

EMBED_TASK, GENERATE_TASK = "embed", "generate"


class EmbedParams(BaseModel):
    """How to embed one request's inputs.

    `dimensions` asks for a shorter vector (Matryoshka: the first `dimensions` values, renormalised); the model must
    have been trained for it, or the request fails naming the width it gives. `truncate` False is OpenAI's behaviour:
    an input longer than the model's limit fails its request, naming its token count and the limit, instead of being
    cut to the limit as sentence-transformers does.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dimensions: int | None = Field(None, ge=1)
    truncate: bool = True


@dataclass
class EmbeddingOutput:
    """A finished embedding request: one vector per input, or an error (the whole request fails together)."""

    request_id: str
    embeddings: np.ndarray  # [inputs, dimensions] float32; empty when the request failed or was aborted
    num_tokens: list[int]  # tokens embedded per input, after truncation
    latency_s: float | None = None  # from intake to the last input's vector
    error: str | None = None
    error_code: str | None = None
    finish_reason: str = "stop"  # "stop" | "abort" | "error"

    @property
    def prompt_tokens(self) -> int:
        return sum(self.num_tokens)
