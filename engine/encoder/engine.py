"""The embedding engine: requests in, one vector per input out, with no KV cache kept between steps.

Its intake mirrors `LLMEngine` (`add_request`/`abort` from any thread, `step()` from one), so the worker's engine
service drives either. A step tokenizes what arrived (one batched tokenizer call), picks texts of similar length
around the one that has waited longest under the token budget, runs one forward, and pools and normalises on the
device. A request of several inputs finishes when its last input is embedded.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from itertools import count

import numpy as np
import torch

from tide.engine.intake import Intake
from tide.engine.embeddings import EMBED_TASK, EmbeddingOutput, EmbedParams
from tide.engine.encoder.config import EncoderConfig
from tide.engine.encoder.packing import PackedBatch, choose_batch
from tide.engine.encoder.pooling import finish, pool
from tide.engine.encoder.startup import EncoderParts, build_encoder_parts
from tide.engine.null_engine import NoBlocks
from tide.engine.stats import EngineStats

Input = str | list[int]


@dataclass
class _Request:
    request_id: str
    inputs: list[Input]
    params: EmbedParams
    rank: tuple[int, int]  # (-priority, arrival): the smallest waiting one anchors the next batch
    arrival_time: float
    vectors: list[np.ndarray | None] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    remaining: int = 0


@dataclass(order=True)
class _Text:
    """One input of a request, tokenized, waiting for a forward."""

    length: int
    rank: tuple[int, int]
    request: _Request = field(compare=False)
    index: int = field(compare=False)
    token_ids: list[int] = field(compare=False)


class EmbeddingEngine:
    """Embeds many requests at once on one encoder (or decoder) model. `task` names what it serves."""

    task = EMBED_TASK

    def __init__(self, config: EncoderConfig | None = None, **overrides) -> None:
        self.config = config or EncoderConfig(**overrides)
        parts: EncoderParts = build_encoder_parts(self.config)
        self.model, self.tokenizer, self.pooling = parts.model, parts.tokenizer, parts.pooling
        self.model_name = self.config.model
        self.max_tokens, self.dimensions, self.vocab_size = parts.max_tokens, parts.hidden_size, parts.vocab_size
        self.device = parts.device
        self.stats = EngineStats(load_time_s=parts.load_time_s)
        self.padded_tokens = 0  # tokens attention saw, padding included (prompt_tokens in stats: the real ones)
        self.block_manager = NoBlocks()  # nothing is kept between steps
        self._intake: Intake[_Request] = Intake()
        self._requests: dict[str, _Request] = {}
        self._waiting: list[_Text] = []  # sorted by length
        self._done: list[EmbeddingOutput] = []
        self._arrivals = count()

    # ---- intake (any thread) --------------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt, params: EmbedParams | None = None, priority: int = 0) -> None:
        """Queue a request: `prompt` is one input (a text or a token-id list) or a list of them. Raises ValueError
        for a duplicate id or a request this model cannot serve."""
        params = params or EmbedParams()
        if not isinstance(params, EmbedParams):
            raise ValueError(f"model {self.model_name} embeds (task embed) and cannot generate text; send this "
                             "request to a generation model, or send embedding requests here")
        self._check_dimensions(params)
        inputs = self._inputs(prompt)
        request = _Request(request_id, inputs, params, (-priority, next(self._arrivals)), time.monotonic())
        self._intake.add(request_id, request)

    def abort(self, request_id: str) -> None:
        """Stop a request; it comes back from `step()` with finish_reason "abort"."""
        self._intake.abort(request_id)

    def has_unfinished(self) -> bool:
        return self._intake.has_live()

    def close(self) -> None:
        """Nothing runs outside this process."""

    def _check_dimensions(self, params: EmbedParams) -> None:
        wanted = params.dimensions
        if wanted is None or wanted == self.dimensions:
            return
        if wanted > self.dimensions:
            raise ValueError(f"dimensions {wanted} is more than model {self.model_name} gives ({self.dimensions})")
        if not self.config.matryoshka:
            raise ValueError(f"model {self.model_name} gives {self.dimensions} dimensions and was not trained for "
                             f"shorter vectors (Matryoshka); omit dimensions, or serve it with matryoshka on if it "
                             "was")

    def _inputs(self, prompt) -> list[Input]:
        """One input or a list of them -> the list; token ids checked against the vocabulary."""
        inputs = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else list(prompt)
        if not inputs:
            raise ValueError("input is empty; give a text, a token-id list, or a non-empty list of those")
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                continue
            if not item or not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in item):
                raise ValueError(f"input[{i}] must be a non-empty text or a non-empty list of token ids in "
                                 f"[0, {self.vocab_size})")
        return inputs

    # ---- the loop (one thread) ------------------------------------------------------------------------------------

    def step(self) -> list[EmbeddingOutput]:
        """Admit what arrived, run one forward over a batch of waiting inputs; return the requests that finished."""
        self._take_intake()
        if self._waiting:
            started = time.monotonic()
            anchor = min(range(len(self._waiting)), key=lambda i: self._waiting[i].rank)
            chosen = choose_batch([t.length for t in self._waiting], anchor, self.config.max_num_batched_tokens,
                                  self.config.max_num_seqs)
            texts = self._waiting[chosen.start:chosen.stop]
            del self._waiting[chosen.start:chosen.stop]
            self._run(texts)
            self._account(texts, time.monotonic() - started)
        done, self._done = self._done, []
        return done

    def _take_intake(self) -> None:
        intake, aborts = self._intake.take()
        if intake:
            self._admit(intake)
        for request_id in aborts:
            request = self._requests.get(request_id)
            if request is not None:
                self._waiting = [t for t in self._waiting if t.request is not request]
                self._finish(request, finish_reason="abort")

    def _admit(self, requests: list[_Request]) -> None:
        """Tokenize every text of the new requests in one call; refuse a request with an input over the limit when
        it asked not to truncate, else cut such inputs to the limit as sentence-transformers does."""
        texts = [x for r in requests for x in r.inputs if isinstance(x, str)]
        encoded = iter(self._tokenize(texts, truncate=False))
        for request in requests:
            ids = [next(encoded) if isinstance(x, str) else list(x) for x in request.inputs]
            over = [(i, len(t)) for i, t in enumerate(ids) if len(t) > self.max_tokens]
            if over and not request.params.truncate:
                i, n = over[0]
                self._finish(request, error=f"input[{i}] has {n} tokens, over this model's limit of "
                             f"{self.max_tokens}; shorten it, or leave truncate on to cut it to the limit",
                             error_code="context_length_exceeded")
                continue
            for i, _ in over:
                x = request.inputs[i]
                ids[i] = self._tokenize([x], truncate=True)[0] if isinstance(x, str) else ids[i][:self.max_tokens]
            request.vectors, request.num_tokens, request.remaining = [None] * len(ids), [len(t) for t in ids], len(ids)
            self._requests[request.request_id] = request
            for i, t in enumerate(ids):
                bisect.insort(self._waiting, _Text(len(t), request.rank, request, i, t))
            self.stats.prompt_tokens += sum(request.num_tokens)

    def _tokenize(self, texts: list[str], truncate: bool) -> list[list[int]]:
        if not texts:
            return []
        limit = dict(truncation=True, max_length=self.max_tokens) if truncate else dict(verbose=False)
        return self.tokenizer(texts, return_attention_mask=False, return_token_type_ids=False, **limit)["input_ids"]

    @torch.inference_mode()
    def _run(self, texts: list[_Text]) -> None:
        batch = PackedBatch.build([t.token_ids for t in texts], self.device)
        vectors = pool(self.model(batch), batch, self.pooling.mode)
        rows = finish(vectors, self.pooling.normalize, [t.request.params.dimensions for t in texts])
        for text, row in zip(texts, rows):
            request = text.request
            request.vectors[text.index] = row
            request.remaining -= 1
            if request.remaining == 0:
                self._finish(request)

    def _finish(self, request: _Request, finish_reason: str = "stop", error: str | None = None,
                error_code: str | None = None) -> None:
        self._requests.pop(request.request_id, None)
        ok = error is None and finish_reason == "stop"
        self._done.append(EmbeddingOutput(
            request_id=request.request_id,
            embeddings=np.stack(request.vectors) if ok else np.empty((0, self.dimensions), np.float32),
            num_tokens=request.num_tokens if ok else [], latency_s=time.monotonic() - request.arrival_time,
            error=error, error_code=error_code, finish_reason=finish_reason if error is None else "error"))
        self._intake.release(request.request_id)

    def _account(self, texts: list[_Text], seconds: float) -> None:
        stats = self.stats
        stats.num_steps += 1
        stats.busy_time_s += seconds
        self.padded_tokens += len(texts) * max(t.length for t in texts)
        stats._occupancy_sum += len(texts) / self.config.max_num_seqs
        stats.mean_batch_occupancy = stats._occupancy_sum / stats.num_steps
