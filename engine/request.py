"""A request as the engine tracks it: its prompt, its `n` sequences, their text, and how each one ended."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Union

from tide.engine.detokenizer import IncrementalDetokenizer, find_stop_string
from tide.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from tide.engine.sampling_params import SamplingParams
from tide.engine.sequence import Sequence

Prompt = Union[str, list[int], list[dict]]


def tokenize_prompt(prompt: Prompt, tokenizer) -> list[int]:
    """Text, token ids, or chat messages (through the tokenizer's chat template) -> token ids."""
    if isinstance(prompt, str):
        ids = tokenizer(prompt).input_ids
    elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        ids = list(prompt)
        bad = [t for t in ids if not 0 <= t < len(tokenizer)]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary (size {len(tokenizer)})")
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False).input_ids
    else:
        raise ValueError("prompt must be a string, a list of token ids, or a list of chat messages "
                         "({'role': ..., 'content': ...})")
    if not ids:
        raise ValueError("prompt is empty")
    return ids


@dataclass
class RequestState:
    """Engine-side state of one request (all of its samples)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int
    metrics: RequestMetrics
    seqs: list[Sequence] = field(default_factory=list)
    error: str | None = None
    error_code: str | None = None
    detokenizers: list[IncrementalDetokenizer] = field(default_factory=list)
    texts: list[str | None] = field(default_factory=list)  # final text once a stop string cut it

    @classmethod
    def create(cls, request_id: str, prompt: Prompt, params: SamplingParams, priority: int,
               tokenizer) -> "RequestState":
        ids = tokenize_prompt(prompt, tokenizer)
        metrics = RequestMetrics(arrival_time=time.monotonic(), prompt_tokens=len(ids))
        return cls(request_id, ids, params, priority, metrics)

    @property
    def num_samples(self) -> int:
        """Sequences the request starts with: its `n` samples, or one prompt that beam search forks later."""
        return 1 if self.params.use_beam_search else self.params.n

    def attach_detokenizer(self, seq: Sequence, tokenizer) -> None:
        self.detokenizers.append(IncrementalDetokenizer(tokenizer, self.prompt_token_ids,
                                                        self.params.skip_special_tokens))
        self.texts.append(None)

    def active_seqs(self) -> list[Sequence]:
        return [s for s in self.seqs if not s.is_finished]

    def check_stop(self, seq: Sequence, token_id: int, eos_token_ids: set[int]) -> bool:
        """Detokenize the new token and decide whether `seq` is done; sets its finish reason."""
        params = self.params
        detok = self.detokenizers[seq.index]
        new_text = detok.append(token_id)
        if token_id in eos_token_ids and not params.ignore_eos:
            seq.finish_reason = "stop"
        elif token_id in params.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token_id
        elif params.stop and new_text and seq.num_output_tokens >= params.min_tokens:
            cut = find_stop_string(detok.text, len(new_text), params.stop)
            if cut is not None:
                self.texts[seq.index] = detok.text[:cut]
                seq.finish_reason = "stop"
                seq.stop_reason = next(s for s in params.stop if detok.text.startswith(s, cut))
        if seq.finish_reason is None and seq.num_tokens >= seq.max_total_tokens:
            seq.finish_reason = "length"
        return seq.finish_reason is not None

    def to_output(self, error: bool) -> RequestOutput:
        if error:
            outputs = [CompletionOutput(index=0, text="", token_ids=[], finish_reason="error")]
            return RequestOutput(self.request_id, self.prompt_token_ids, outputs, self.metrics, error=self.error,
                                 error_code=self.error_code)
        outputs = []
        for seq in self.seqs:
            text = self.texts[seq.index]
            outputs.append(CompletionOutput(
                index=seq.index,
                text=self.detokenizers[seq.index].text if text is None else text,
                token_ids=list(seq.output_token_ids),
                finish_reason=seq.finish_reason or "abort",
                stop_reason=seq.stop_reason,
                logprobs=seq.logprobs,
                cumulative_logprob=seq.cumulative_logprob,
            ))
        self.metrics.completion_tokens = sum(len(o.token_ids) for o in outputs)
        self.metrics.cached_prompt_tokens = self.seqs[0].num_cached_tokens if self.seqs else 0
        return RequestOutput(self.request_id, self.prompt_token_ids, outputs, self.metrics,
                             prompt_logprobs=self.seqs[0].prompt_logprobs if self.seqs else None)
