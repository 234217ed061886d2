"""What the job side needs from an engine: the seam between a shard and the engine that runs its rows.

`tide.workers.engine_service.EngineService` is the implementation (one engine per process, stepped on its own
thread); tests put stand-ins behind it or wrap it. Finished requests come back on the caller's `sink` as lists of
the engine's `RequestOutput`s, one list per engine step (or an exception, when the engine loop died).
"""
from __future__ import annotations

import queue
from typing import Protocol

from tide.engine.sampling_params import SamplingParams
from tide.jobs.messages import Prompt
from tide.jobs.state import EngineFigures, EngineLoad


class EngineClient(Protocol):
    def submit(self, request_id: str, prompt: Prompt, params: SamplingParams, priority: int,
               sink: queue.Queue) -> None: ...  # raises ValueError for a request the engine refuses
    def abort(self, request_id: str) -> None: ...
    def figures(self) -> EngineFigures: ...  # running totals, recorded with each finished shard
    def load(self) -> EngineLoad: ...  # what the engine counts this moment, sampled into a shard's series
    def token_bytes(self, token_ids: list[int]) -> list[bytes]: ...  # each token's bytes, for logprobs
    def fingerprint(self) -> str | None: ...  # OpenAI's system_fingerprint of this engine (None: unknown)
