"""Per-sequence state: tokens, progress, blocks and outcome. No tensors live here."""
from __future__ import annotations

from enum import Enum, auto
from itertools import count

import torch

from tide.engine.outputs import TokenLogprob
from tide.engine.sampling_params import SamplingParams

_seq_ids = count()


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    """One sample of one request.

    There is no prefill or decode phase: `num_computed_tokens` (tokens whose KV is in the cache) catches up with
    `num_tokens` (prompt + sampled). A step computes some of the missing tokens; when it reaches the end, a new token
    is sampled, so a running decode always has exactly one token left to compute.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        index: int = 0,
        priority: int = 0,
        arrival_order: int = 0,
        max_total_tokens: int,
    ) -> None:
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.index = index
        self.priority = priority
        self.arrival_order = arrival_order
        self.params = params
        self.prompt_token_ids = prompt_token_ids
        self.token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.num_draft_tokens = 0  # proposed tokens at the end of token_ids, not yet verified (speculative decoding)
        self.block_hashes: list[int] = []  # chained hashes of full blocks, filled in by the block manager
        # The chain of block hashes starts from the adapter's name: KV computed under one adapter (or none) is
        # never served to a sequence of another.
        self.hash_root = -1 if params.lora is None else hash(("lora", params.lora))
        self.num_admissions = 0  # times moved from waiting to running (more than one means it was preempted)
        self.block_table: list[int] = []
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.logprobs: list[TokenLogprob] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        # the first sample scores the prompt for its request (engine/prompt_logprobs.py), one entry per prompt token
        scores = params.prompt_logprobs is not None and index == 0
        self.prompt_logprobs: list[TokenLogprob | None] | None = [None] * len(prompt_token_ids) if scores else None
        self.generator: torch.Generator | None = None
        self.guide = None  # engine.guided.Guide of a guided request, set when the engine admits it
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed + index)
        limit = max_total_tokens if params.max_tokens is None else self.num_prompt_tokens + params.max_tokens
        self.max_total_tokens = min(limit, max_total_tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def prompt_scoring_start(self) -> int | None:
        """First position whose logits score a prompt token (that position's next token); None once nothing is left
        to score (no prompt logprobs asked, or the prompt is done and output began)."""
        if self.prompt_logprobs is None or self.output_token_ids:
            return None
        return max(self.params.prompt_logprobs_start, 1) - 1

    @property
    def num_cacheable_tokens(self) -> int:
        """Leading tokens whose KV may come from the prefix cache: all but the last (its logits are needed), and none
        at or past the first position a prompt logprob needs computed."""
        start = self.prompt_scoring_start
        return self.num_tokens - 1 if start is None else min(self.num_tokens - 1, start)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def sort_key(self) -> tuple[int, int, int]:
        """Higher priority first, then first come, first served."""
        return (-self.priority, self.arrival_order, self.index)

    def append_token(self, token_id: int, logprob: TokenLogprob | None) -> None:
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)
        if logprob is not None:
            self.cumulative_logprob += logprob.logprob
            if self.logprobs is not None:
                self.logprobs.append(logprob)

    def fork(self, index: int) -> "Sequence":
        """A copy with the same tokens and outcome so far (a beam branching off), holding no blocks yet."""
        child = Sequence(self.request_id, self.prompt_token_ids, self.params, index=index, priority=self.priority,
                         arrival_order=self.arrival_order, max_total_tokens=self.max_total_tokens)
        child.token_ids = list(self.token_ids)
        child.output_token_ids = list(self.output_token_ids)
        child.block_hashes = list(self.block_hashes)
        child.logprobs = None if self.logprobs is None else list(self.logprobs)
        child.cumulative_logprob = self.cumulative_logprob
        child.num_admissions = self.num_admissions
        return child

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, req={self.request_id!r}#{self.index}, tokens={self.num_tokens}, "
                f"computed={self.num_computed_tokens}, status={self.status.name})")
