"""A stand-in with LLMEngine's step-level API, for unit tests of the job side without loading a model.

Its output is a pure function of the prompt and max_tokens (the prompt's words reversed, one "token" per word), so
tests can predict every row's text. Prompts of more than `max_model_len` words finish with an error, as the real
engine does for prompts longer than its context.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from tide.engine.llm_engine import EngineStats
from tide.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob


def prompt_words(prompt) -> list[str]:
    if isinstance(prompt, str):
        return prompt.split()
    return " ".join(m["content"] for m in prompt).split()


def expected_text(prompt, max_tokens: int | None) -> str:
    words = list(reversed(prompt_words(prompt)))
    return " ".join(words[:max_tokens] if max_tokens else words)


class FakeTokenizer:
    """Token `i` reads `t<i>` (the fake's tokens are positions, not a vocabulary)."""

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [f"t{i}" for i in ids]

    def decode(self, ids: list[int]) -> str:
        return "".join(f"t{i}" for i in ids)


class FakeEngine:
    def __init__(self, max_num_seqs: int = 4, max_model_len: int = 64, step_delay_s: float = 0.0) -> None:
        self.max_num_seqs, self.max_model_len, self.step_delay_s = max_num_seqs, max_model_len, step_delay_s
        self.stats = EngineStats()
        self.tokenizer = FakeTokenizer()
        self.block_manager = SimpleNamespace(num_blocks=64, num_free_blocks=64)  # what EngineService.load reads
        self.added: list[str] = []  # request ids in the order they arrived
        self._lock = threading.Lock()
        self._waiting: list[tuple[str, object, object, float]] = []
        self._aborted: set[str] = set()

    def add_request(self, request_id: str, prompt, params, priority: int = 0) -> None:
        if not prompt_words(prompt):
            raise ValueError("prompt is empty")
        with self._lock:
            if request_id in self.added:
                raise ValueError(f"request id {request_id!r} is already in the engine")
            self.added.append(request_id)
            self._waiting.append((request_id, prompt, params, time.monotonic()))

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborted.add(request_id)

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self._waiting)

    def step(self) -> list[RequestOutput]:
        time.sleep(self.step_delay_s)
        with self._lock:
            batch, self._waiting = self._waiting[: self.max_num_seqs], self._waiting[self.max_num_seqs:]
            aborted = set(self._aborted)
        self.stats.num_steps += 1
        occupancy = len(batch) / self.max_num_seqs
        self.stats.mean_batch_occupancy += (occupancy - self.stats.mean_batch_occupancy) / self.stats.num_steps
        return [self._finish(*item, aborted=item[0] in aborted) for item in batch]

    def _finish(self, request_id, prompt, params, arrival, aborted: bool) -> RequestOutput:
        words = prompt_words(prompt)
        now = time.monotonic()
        metrics = RequestMetrics(arrival_time=arrival, first_scheduled_time=now, first_token_time=now,
                                 finished_time=now, prompt_tokens=len(words))
        if len(words) > self.max_model_len:
            out = CompletionOutput(index=0, text="", token_ids=[], finish_reason="error")
            return RequestOutput(request_id, list(range(len(words))), [out], metrics,
                                 error=f"prompt has {len(words)} tokens, more than {self.max_model_len}")
        text = "" if aborted else expected_text(prompt, params.max_tokens)
        tokens = list(range(len(text.split())))
        logprobs = [TokenLogprob(t, -0.5, [(t, -0.5)]) for t in tokens] if params.logprobs is not None else None
        outputs = [CompletionOutput(index=i, text=text, token_ids=tokens, logprobs=logprobs,
                                    finish_reason="abort" if aborted else "length") for i in range(params.n)]
        metrics.completion_tokens = len(tokens) * params.n
        self.stats.prompt_tokens += len(words)
        self.stats.generation_tokens += metrics.completion_tokens
        return RequestOutput(request_id, list(range(len(words))), outputs, metrics)
