"""Prompt logprobs: the logprob of each prompt token given the ones before it, taken during prefill.

A step's flat token batch holds each scheduled sequence's chunk in order. The logits at a prompt position predict the
next prompt token, so a chunk covering positions [start, end) scores the prompt tokens start+1 .. end (those past
`prompt_logprobs_start`, up to the prompt's last token). `plan` names those rows of the batch; the model runner hands
back their final hidden states, and `record` turns them into logits, a few hundred rows at a time so a long prompt
never holds [tokens, vocab] logits at once, and files each logprob under its prompt position.

Chunked prefill needs nothing more: every chunk scores its own positions. A cached prefix has no hidden states, so
a sequence that scores its prompt takes from the prefix cache only the blocks before its first scored position
(`Sequence.num_cacheable_tokens`): a shared few-shot context still comes from the cache when the request scores only
what follows it. A sequence preempted mid-prompt recomputes and files the same positions again.

`max_tokens=0` requests end when their prompt is computed: `split_score_only` takes their rows out of the step's
sampling logits so no token is sampled for them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tide.engine.outputs import TokenLogprob
from tide.engine.sequence import Sequence

# Rows turned into logits at once: 256 x a 128k vocabulary is 128 MiB of fp32 logits.
_ROWS_PER_CHUNK = 256


@dataclass
class PromptRows:
    """Rows of a step's flat token batch whose logits score prompt tokens, and (sequence, prompt position) each
    scores."""

    rows: list[int] = field(default_factory=list)
    targets: list[tuple[Sequence, int]] = field(default_factory=list)


def plan(scheduled: list[tuple[Sequence, int]]) -> PromptRows:
    """The rows this step's chunks score (call before the step's tokens are marked computed)."""
    out = PromptRows()
    offset = 0
    for seq, num_new in scheduled:
        first = seq.prompt_scoring_start
        if first is not None:
            start = seq.num_computed_tokens
            for pos in range(max(start, first), min(start + num_new, seq.num_prompt_tokens - 1)):
                out.rows.append(offset + pos - start)
                out.targets.append((seq, pos + 1))
        offset += num_new
    return out


@torch.inference_mode()
def record(rows: PromptRows, hidden: torch.Tensor, compute_logits: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """File the logprob of each target token (and its top alternatives) from the hidden states at `rows.rows`."""
    for begin in range(0, len(rows.targets), _ROWS_PER_CHUNK):
        targets = rows.targets[begin:begin + _ROWS_PER_CHUNK]
        logprobs = compute_logits(hidden[begin:begin + len(targets)]).float().log_softmax(dim=-1)
        token_ids = [seq.prompt_token_ids[pos] for seq, pos in targets]
        ids = torch.tensor(token_ids, dtype=torch.long, device=logprobs.device)
        chosen = logprobs.gather(1, ids.unsqueeze(1)).squeeze(1).tolist()
        most = max(1, max(seq.params.prompt_logprobs for seq, _ in targets))
        top_values, top_ids = (t.tolist() for t in logprobs.topk(most, dim=-1))
        for j, (seq, pos) in enumerate(targets):
            k = seq.params.prompt_logprobs
            top = list(zip(top_ids[j][:k], top_values[j][:k]))
            seq.prompt_logprobs[pos] = TokenLogprob(token_ids[j], chosen[j], top)


def split_score_only(logits: torch.Tensor, sampling: list[Sequence]
                     ) -> tuple[torch.Tensor, list[Sequence], list[Sequence]]:
    """(logits, sampling) without the rows of `max_tokens=0` sequences, and those sequences, whose prompt is done.

    A sequence has 1 + num_draft_tokens consecutive rows (model_runner.ModelRunner.run)."""
    done = [seq for seq in sampling if seq.params.max_tokens == 0]
    if not done:
        return logits, sampling, done
    keep_rows, keep, row = [], [], 0
    for seq in sampling:
        width = 1 + seq.num_draft_tokens
        if seq.params.max_tokens != 0:
            keep_rows.extend(range(row, row + width))
            keep.append(seq)
        row += width
    return logits[torch.tensor(keep_rows, dtype=torch.long, device=logits.device)], keep, done
