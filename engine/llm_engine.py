"""The step-level engine: schedule -> run -> postprocess, with thread-safe intake for a background loop."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import count

import torch

from tide.engine import prompt_logprobs
from tide.engine.config import EngineConfig
from tide.engine.decoding.beam_search import BeamSearch
from tide.engine.decoding.guided import GuidedDecoding, GuidedError
from tide.engine.decoding.speculative import build_speculator
from tide.engine.embeddings import GENERATE_TASK
from tide.engine.intake import Intake
from tide.engine.outputs import RequestOutput
from tide.engine.stats import EngineStats
from tide.engine.request import Prompt, RequestState
from tide.engine.sampling_params import SamplingParams
from tide.engine.scheduler import Scheduler
from tide.engine.sequence import Sequence
from tide.engine.startup import EngineParts, build_engine_parts

logger = logging.getLogger("tide.engine")


class LLMEngine:
    """Runs many requests at once on one model. `step()` advances every scheduled request by one step.

    `add_request` and `abort` may be called from any thread; `step` from one thread at a time.
    """

    task = GENERATE_TASK

    def __init__(self, config: EngineConfig | None = None, **overrides) -> None:
        self.config = config or EngineConfig(**overrides)
        parts: EngineParts = build_engine_parts(self.config)
        self.tokenizer = parts.tokenizer
        self.model_name = self.config.model
        self.max_model_len = parts.max_model_len
        self.eos_token_ids = parts.eos_token_ids
        self.block_manager = parts.block_manager
        self.runner = parts.runner
        self.sampler = parts.sampler
        self.vocab_size = parts.vocab_size
        self.guided = GuidedDecoding(self.tokenizer, self.vocab_size, self.eos_token_ids)
        self.max_seq_tokens = min(self.max_model_len, self.block_manager.num_blocks * self.config.block_size)
        self.adapters = parts.adapters
        self.scheduler = Scheduler(self.block_manager, self.config.max_num_seqs,
                                   self.config.max_num_batched_tokens, self.config.enable_prefix_caching,
                                   gate=self.adapters)
        self.beam_search = BeamSearch(self.scheduler, self.block_manager, self.runner, self.tokenizer,
                                      self.eos_token_ids)
        self.speculator = build_speculator(self.config, parts, self.max_model_len, self.scheduler.watermark_blocks)
        self.stats = EngineStats(load_time_s=parts.load_time_s)
        self._intake: Intake[RequestState] = Intake()
        self._requests: dict[str, RequestState] = {}
        self._done: list[RequestOutput] = []
        self._arrivals = count()

    # ---- intake (any thread) --------------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: Prompt, params: SamplingParams | None = None,
                    priority: int = 0) -> None:
        """Queue a request. Raises ValueError for a duplicate id or parameters this model cannot honour."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise ValueError(f"model {self.model_name} generates text (task generate) and cannot embed; send "
                             "embedding requests to an embedding model")
        bad = [t for t in params.stop_token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"stop_token_ids {bad} are outside the vocabulary (size {self.vocab_size})")
        self.adapters.check(params)  # an unknown or unusable adapter is refused here, by name
        state = RequestState.create(request_id, prompt, params, priority, self.tokenizer)
        self._intake.add(request_id, state)

    def abort(self, request_id: str) -> None:
        """Stop a request; it comes back from `step()` with finish_reason "abort"."""
        self._intake.abort(request_id)

    def has_unfinished(self) -> bool:
        return self._intake.has_live()

    def close(self) -> None:
        """Stop the engine's helper processes (tensor-parallel ranks), if it has any; it cannot step afterwards."""
        self.runner.close()
        self.adapters.close()

    # ---- the loop (one thread) ------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one scheduler step; return the requests that finished during it."""
        self._take_intake()
        out = self.scheduler.schedule()
        self.speculator.fit(out)
        if not out.is_empty:
            started = time.monotonic()
            self._mark_scheduled(out.scheduled, started)
            scoring = prompt_logprobs.plan(out.scheduled)
            logits, sampling, hidden = self.runner.forward(out.scheduled, scoring.rows)
            self._mark_computed(out.scheduled)
            prompt_logprobs.record(scoring, hidden, self.runner.compute_logits)
            logits, sampling = self._finish_score_only(logits, sampling)
            if sampling:
                logits, sampling = self._take_beams(logits, sampling)
            if sampling:
                sampling, sampled = self._verify(logits, sampling, self.guided.bitmask(sampling))
                self.stats.generation_tokens += self._postprocess(sampling, sampled)
            self.speculator.propose(self.scheduler.running)
            self._account(out, time.monotonic() - started)
        return self._collect_done()

    def _take_intake(self) -> None:
        intake, aborts = self._intake.take()
        for state in intake:
            self._admit(state)
        for request_id in aborts:
            state = self._requests.get(request_id)
            if state is not None:
                for seq in state.active_seqs():
                    self.scheduler.finish(seq)
                    seq.finish_reason = "abort"
                self._finish_request(state)

    def _admit(self, state: RequestState) -> None:
        n_prompt = len(state.prompt_token_ids)
        limit = self.max_seq_tokens
        if state.error is None and n_prompt >= limit:
            state.error = (f"prompt has {n_prompt} tokens, but this engine holds at most {limit - 1} prompt tokens "
                           f"per sequence (max_model_len={self.max_model_len}, KV cache "
                           f"{self.block_manager.num_blocks * self.config.block_size} tokens)")
        start = state.params.prompt_logprobs_start
        if state.error is None and state.params.prompt_logprobs is not None and start >= n_prompt:
            state.error = f"prompt_logprobs_start ({start}) must be less than the prompt's {n_prompt} tokens"
        if state.error is None and state.params.guided is not None:
            try:
                self.guided.compile(state.params.guided)
            except GuidedError as exc:
                state.error, state.error_code = str(exc), exc.code
        if state.error is None:
            state.error = self.beam_search.check(state, limit, self.config.max_num_seqs)
        if state.error is not None:
            self._done.append(state.to_output(error=True))
            self._intake.release(state.request_id)
            return
        self._requests[state.request_id] = state
        self.stats.prompt_tokens += n_prompt
        state.seqs = [Sequence(state.request_id, state.prompt_token_ids, state.params, index=i,
                               priority=state.priority, arrival_order=next(self._arrivals), max_total_tokens=limit)
                      for i in range(state.num_samples)]
        for seq in state.seqs:
            state.attach_detokenizer(seq, self.tokenizer)
            seq.guide = self.guided.guide(state.params)
        # Samples after the first wait until its prompt is in the cache, then share its full blocks.
        self.scheduler.add(state.seqs[0])
        self.beam_search.start(state)

    def _mark_scheduled(self, scheduled: list[tuple[Sequence, int]], now: float) -> None:
        for seq, _ in scheduled:
            metrics = self._requests[seq.request_id].metrics
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = now

    def _mark_computed(self, scheduled: list[tuple[Sequence, int]]) -> None:
        for seq, num_new in scheduled:
            seq.num_computed_tokens += num_new
            self.block_manager.register_full_blocks(seq)

    def _finish_score_only(self, logits: torch.Tensor, sampling: list[Sequence]
                           ) -> tuple[torch.Tensor, list[Sequence]]:
        """`max_tokens=0` requests end once their prompt is computed (and scored); the other rows go on to sampling."""
        logits, sampling, done = prompt_logprobs.split_score_only(logits, sampling)
        for seq in done:
            seq.finish_reason = "length"
            self.scheduler.finish(seq)
            self._finish_request(self._requests[seq.request_id])
        return logits, sampling

    def _take_beams(self, logits: torch.Tensor, sampling: list[Sequence]) -> tuple[torch.Tensor, list[Sequence]]:
        """Beam groups choose their tokens from their rows; the rows left are sampled as usual."""
        num_rows = len(sampling)
        logits, sampling, ended = self.beam_search.step(logits, sampling)
        self.stats.generation_tokens += num_rows - len(sampling)  # beams took their tokens
        for request_id in ended:
            self._finish_request(self._requests[request_id])
        return logits, sampling

    def _verify(self, logits: torch.Tensor, seqs: list[Sequence], bitmask: torch.Tensor | None):
        verified = self.speculator.verify(logits, seqs, self.sampler, self.eos_token_ids, bitmask)
        for seq, proposed, accepted in verified.counts:
            metrics = self._requests[seq.request_id].metrics
            metrics.spec_proposed_tokens += proposed
            metrics.spec_accepted_tokens += accepted
        return verified.seqs, verified.sampled

    def _postprocess(self, seqs: list[Sequence], sampled) -> int:
        """Append each sampled token and check stops; returns the number appended. A sequence may come several
        times in a row (accepted draft tokens): once it stops, its later tokens are dropped."""
        now = time.monotonic()
        appended = 0
        for seq, token_id, logprob in zip(seqs, sampled.token_ids, sampled.logprobs):
            if seq.is_finished:
                continue
            appended += 1
            state = self._requests[seq.request_id]
            if state.metrics.first_token_time is None:
                state.metrics.first_token_time = now
            if seq.index == 0 and seq.num_output_tokens == 0:
                for child in state.seqs[1:]:
                    self.scheduler.add(child)
            seq.append_token(token_id, logprob)
            if state.check_stop(seq, token_id, self.eos_token_ids) or self._follow_guide(state, seq, token_id):
                self.scheduler.finish(seq)
                if all(s.is_finished for s in state.seqs):
                    self._finish_request(state)
        return appended

    def _follow_guide(self, state: RequestState, seq: Sequence, token_id: int) -> bool:
        """Feed the token to the sequence's grammar, if it has one, and append the tokens the grammar forces after
        it; True when that finishes the sequence."""
        if seq.guide is None:
            return False
        done, forced = self.guided.advance(state, seq, token_id, self.eos_token_ids)
        self.stats.generation_tokens += forced
        self.stats.guided_forced_tokens += forced
        return done

    def _finish_request(self, state: RequestState) -> None:
        state.metrics.finished_time = time.monotonic()
        self._requests.pop(state.request_id, None)
        self._done.append(self.beam_search.finish(state) or state.to_output(error=False))
        self._intake.release(state.request_id)

    def _collect_done(self) -> list[RequestOutput]:
        done, self._done = self._done, []
        return done

    def _account(self, out, seconds: float) -> None:
        stats = self.stats
        stats.num_steps += 1
        stats.busy_time_s += seconds
        stats.preemptions = self.scheduler.num_preemptions
        stats.prefix_cache_hit_rate = self.block_manager.hit_rate
        stats._occupancy_sum += len(out.scheduled) / self.config.max_num_seqs
        stats.mean_batch_occupancy = stats._occupancy_sum / stats.num_steps
        stats.spec_proposed_tokens = self.speculator.num_proposed
        stats.spec_accepted_tokens = self.speculator.num_accepted
        stats.spec_acceptance_rate = stats.spec_accepted_tokens / max(stats.spec_proposed_tokens, 1)
