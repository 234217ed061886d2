"""An engine that runs no model: each request finishes in the next step with a fixed number of output tokens.

It exists to measure and test everything around the engine (queues, leases, shard runner, writers, finalize) at the
rate a fleet of fast GPUs would finish rows: `tide worker --engine null`. It loads nothing and imports no torch, so
many of them fit on one machine. Its output is not text anyone should read: the same token repeated, and prompt
tokens counted as whitespace-separated words (no tokenizer is loaded).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from itertools import islice

from tide.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from tide.engine.sampling_params import SamplingParams
from tide.engine.stats import EngineStats

NULL_TOKEN_ID = 0


@dataclass
class NoBlocks:
    """No KV cache: always empty, so the engine's load reads as 0% used (engines that keep no cache use it)."""

    num_blocks: int = 1
    num_free_blocks: int = 1


class NullEngine:
    """The engine's interface (`add_request`, `abort`, `has_unfinished`, `step`, `stats`) with no model behind it."""

    def __init__(self, output_tokens: int = 8, max_num_seqs: int = 1024) -> None:
        if output_tokens < 1:
            raise ValueError(f"a null engine writes at least 1 output token, not {output_tokens}")
        self.output_tokens = output_tokens
        self.max_num_seqs = max_num_seqs  # requests finished per step, for the batch occupancy figure
        self.stats = EngineStats()
        self.block_manager = NoBlocks()
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[object, SamplingParams, float]] = {}  # in arrival order
        self._outputs: dict[int, tuple[str, list[int]]] = {}

    def add_request(self, request_id: str, prompt, params: SamplingParams | None = None, priority: int = 0) -> None:
        if not isinstance(prompt, (str, list)):
            raise ValueError(f"prompt must be text, token ids or chat messages, not {type(prompt).__name__}")
        with self._lock:
            self._pending[request_id] = (prompt, params or SamplingParams(), time.monotonic())

    def abort(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def step(self) -> list[RequestOutput]:
        """Finish up to `max_num_seqs` waiting requests, in arrival order."""
        started = time.monotonic()
        with self._lock:
            taken = list(islice(self._pending.items(), self.max_num_seqs))
            for request_id, _ in taken:
                del self._pending[request_id]
        outputs = [self._finish(request_id, prompt, params, arrival, started)
                   for request_id, (prompt, params, arrival) in taken]
        self._account(len(taken), outputs, time.monotonic() - started)
        return outputs

    def close(self) -> None:
        pass

    def _finish(self, request_id: str, prompt, params: SamplingParams, arrival: float, now: float) -> RequestOutput:
        tokens = self.output_tokens if params.max_tokens is None else min(self.output_tokens, params.max_tokens)
        text, token_ids = self._text(tokens)
        samples = [CompletionOutput(index=i, text=text, token_ids=token_ids, finish_reason="length")
                   for i in range(params.n)]
        metrics = RequestMetrics(arrival_time=arrival, first_scheduled_time=now, first_token_time=now,
                                 finished_time=now, prompt_tokens=_count_prompt(prompt),
                                 completion_tokens=tokens * params.n)
        return RequestOutput(request_id, [], samples, metrics)

    def _text(self, tokens: int) -> tuple[str, list[int]]:
        """The output of `tokens` tokens, made once per length and shared between requests, which only read it."""
        if tokens not in self._outputs:
            self._outputs[tokens] = (" null" * tokens, [NULL_TOKEN_ID] * tokens)
        return self._outputs[tokens]

    def _account(self, rows: int, outputs: list[RequestOutput], seconds: float) -> None:
        stats = self.stats
        stats.num_steps += 1
        stats.busy_time_s += seconds
        stats.prompt_tokens += sum(o.metrics.prompt_tokens for o in outputs)
        stats.generation_tokens += sum(o.metrics.completion_tokens for o in outputs)
        stats._occupancy_sum += rows / self.max_num_seqs
        stats.mean_batch_occupancy = stats._occupancy_sum / stats.num_steps


def _count_prompt(prompt) -> int:
    """Words of a text prompt or of every message's content; a token-id prompt's length."""
    if isinstance(prompt, str):
        return len(prompt.split())
    if prompt and isinstance(prompt[0], int):
        return len(prompt)
    return sum(len(str(m.get("content", "")).split()) for m in prompt if isinstance(m, dict))
