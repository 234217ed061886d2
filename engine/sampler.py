"""Turns one step's next-token logits into token ids (and logprobs), one row per sequence, with batched tensor ops.

Order of processing, per row:
1. logprobs are taken from log_softmax of the raw logits, so they compare directly with another implementation's logits;
2. repetition penalty (over prompt + output tokens), then presence and frequency penalties (over output tokens);
3. EOS and stop token ids are masked while the output is shorter than `min_tokens`, then the tokens a guided
   request's grammar rules out (a bitmask from tide.engine.decoding.guided);
4. greedy rows take the argmax; the others go through temperature, top-k, top-p, min-p, then an exponential race.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from tide.engine.decoding.token_bitmask import apply_token_bitmask_
from tide.engine.outputs import TokenLogprob
from tide.engine.sampling_params import SamplingParams
from tide.kernels import torch_ops

# top-p looks for its nucleus among this many candidates first, widening by _TOP_P_GROWTH until it is found:
# a full sort of a 49k vocabulary costs ~3 ms a row on CPU, a top-256 a tenth of that.
_TOP_P_FIRST_CANDIDATES = 256
_TOP_P_GROWTH = 8


class SamplingRow(Protocol):
    """What the sampler reads from a sequence (the engine's Sequence satisfies it)."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None


@dataclass
class SamplerOutput:
    """One sampled token per row, and its logprobs where the row's request asked for them."""

    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


class Sampler:
    """Samples the next token of every row of a batch; `argmax` is the kernel backend's (`KernelOps.argmax`)."""

    def __init__(self, argmax: Callable[[torch.Tensor], torch.Tensor] = torch_ops.argmax) -> None:
        self.argmax = argmax

    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow], eos_token_ids: set[int],
                 token_bitmask: torch.Tensor | None = None) -> SamplerOutput:
        """Sample one token per row of `logits` ([len(rows), vocab], any float dtype); `logits` is left unchanged.

        `token_bitmask` ([len(rows), vocab / 32] int32, see engine.token_bitmask) forbids tokens a grammar rules out;
        it applies after the penalties and before sampling, so logprobs still describe the model's own distribution.
        """
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must be [num_rows={len(rows)}, vocab], got shape {tuple(logits.shape)}")
        processed = logits  # greedy rows with nothing to edit take the argmax in the model's dtype, without a copy
        if token_bitmask is not None or any(_edits_logits(row) for row in rows):
            processed = logits.to(torch.float32, copy=True)
            apply_penalties_(processed, rows)
            mask_stop_tokens_before_min_tokens_(processed, rows, eos_token_ids)
            if token_bitmask is not None:
                apply_token_bitmask_(processed, token_bitmask)
        # one argmax over every row costs less than gathering the greedy rows first
        token_ids = self.argmax(processed)
        sampled = [i for i, row in enumerate(rows) if not row.params.greedy]
        if sampled:
            idx = _index(sampled, logits.device)
            token_ids[idx] = _sample(processed[idx].float(), [rows[i] for i in sampled])
        return SamplerOutput(token_ids.tolist(), token_logprobs(logits, rows, token_ids))


def argmax_decides(row: SamplingRow) -> bool:
    """Whether this row's token is its logits' argmax and nothing else is read from them: greedy, no logprobs, no
    penalty or min_tokens mask (a guided, beam or draft-carrying row is the caller's to rule out)."""
    return row.params.greedy and row.params.logprobs is None and not _edits_logits(row)


def _edits_logits(row: SamplingRow) -> bool:
    """Whether a penalty or the min_tokens mask changes this row's logits at this step."""
    params = row.params
    return (params.repetition_penalty != 1.0 or len(row.output_token_ids) < params.min_tokens
            or (params.presence_penalty != 0.0 or params.frequency_penalty != 0.0) and bool(row.output_token_ids))


def _index(positions: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(positions, dtype=torch.long, device=device)


def _row_param(rows: Sequence[SamplingRow], name: str, device: torch.device) -> torch.Tensor:
    """One value per row: int64 for integer params (top_k), float32 for the others."""
    values = [getattr(row.params, name) for row in rows]
    return torch.tensor(values, dtype=torch.long if isinstance(values[0], int) else torch.float32, device=device)


def apply_penalties_(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """In place: repetition penalty (HF: positive logits divided, negative multiplied, once per distinct prompt or
    output token), then presence and frequency penalties (OpenAI: subtracted, over output tokens only).

    Only the (row, token) entries concerned are touched, so the cost follows the token counts, not the vocabulary.
    """
    device = logits.device
    rows_idx, cols, factors = [], [], []
    for i, row in enumerate(rows):
        if row.params.repetition_penalty != 1.0:
            seen = set(row.prompt_token_ids).union(row.output_token_ids)
            rows_idx.extend([i] * len(seen))
            cols.extend(seen)
            factors.extend([row.params.repetition_penalty] * len(seen))
    if cols:
        at = (_index(rows_idx, device), _index(cols, device))
        values, penalty = logits[at], torch.tensor(factors, dtype=logits.dtype, device=device)
        logits[at] = torch.where(values > 0, values / penalty, values * penalty)
    rows_idx, cols, deltas = [], [], []
    for i, row in enumerate(rows):
        params = row.params
        if params.presence_penalty == 0.0 and params.frequency_penalty == 0.0:
            continue
        counts = Counter(row.output_token_ids)
        rows_idx.extend([i] * len(counts))
        cols.extend(counts)
        deltas.extend(params.presence_penalty + params.frequency_penalty * n for n in counts.values())
    if cols:
        at = (_index(rows_idx, device), _index(cols, device))
        logits[at] -= torch.tensor(deltas, dtype=logits.dtype, device=device)


def mask_stop_tokens_before_min_tokens_(logits: torch.Tensor, rows: Sequence[SamplingRow],
                                        eos_token_ids: set[int]) -> None:
    """In place: forbid EOS and the row's stop token ids while its output is shorter than `min_tokens`.

    EOS is masked even for `ignore_eos` rows: min_tokens promises that many tokens before any stop token.
    """
    rows_idx, cols = [], []
    for i, row in enumerate(rows):
        if len(row.output_token_ids) < row.params.min_tokens:
            banned = eos_token_ids | set(row.params.stop_token_ids)
            rows_idx.extend([i] * len(banned))
            cols.extend(banned)
    if cols:
        logits[_index(rows_idx, logits.device), _index(cols, logits.device)] = float("-inf")


def top_k_mask(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[N, V] bool, True for tokens outside row i's `k[i]` highest logits.

    Exactly k tokens are kept: when several tokens tie with the k-th highest value, the lowest token ids win.
    """
    k = k.clamp(max=logits.shape[1]).unsqueeze(1)
    kth = logits.topk(int(k.max()), dim=-1).values.gather(1, k - 1)
    drop = logits < kth
    crowded = (drop.sum(dim=-1) < logits.shape[1] - k.squeeze(1)).nonzero().squeeze(1)
    if crowded.numel():
        # only rows with more ties at the k-th value than free slots pay for a cumulative count over the vocabulary
        values, threshold = logits[crowded], kth[crowded]
        tied = values == threshold
        free_slots = k[crowded] - (values > threshold).sum(dim=-1, keepdim=True)
        drop[crowded] = (values < threshold) | (tied & (tied.cumsum(dim=-1) > free_slots))
    return drop


def top_p_mask(probs: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """[N, V] bool, True for tokens outside row i's nucleus: the smallest set of most probable tokens whose total
    probability reaches `p[i]` (at least one token). Tokens tying with the least probable member are kept too.

    `probs` rows must sum to 1. Candidates are the top 256 tokens, widened only for rows whose nucleus is larger.
    """
    vocab = probs.shape[1]
    threshold = torch.empty(probs.shape[0], 1, dtype=probs.dtype, device=probs.device)
    pending = torch.arange(probs.shape[0], device=probs.device)
    candidates = min(_TOP_P_FIRST_CANDIDATES, vocab)
    while pending.numel():
        top = probs[pending].topk(candidates, dim=-1).values
        cum = top.cumsum(dim=-1)
        target = p[pending].unsqueeze(1)
        # with every token a candidate the nucleus is found by definition, even if rounding leaves cum < p
        found = torch.ones_like(pending, dtype=torch.bool) if candidates == vocab else cum[:, -1] >= target[:, 0]
        last = (cum < target).sum(dim=-1, keepdim=True).clamp(max=candidates - 1)
        threshold[pending[found]] = top.gather(1, last)[found]
        pending = pending[~found]
        candidates = min(candidates * _TOP_P_GROWTH, vocab)
    return probs < threshold


def min_p_mask(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """[N, V] bool, True for tokens less probable than `min_p[i]` times row i's most probable token."""
    return probs < min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values


def _sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p, then an exponential race; `logits` is a private copy, changed in place."""
    logits.div_(_row_param(rows, "temperature", logits.device).unsqueeze(1))
    _mask_rows_(logits, rows, "top_k", lambda p: p.top_k > 0, top_k_mask, float("-inf"))
    probs = logits.softmax(dim=-1)
    _mask_rows_(probs, rows, "top_p", lambda p: p.top_p < 1.0, top_p_mask, 0.0)
    # min-p compares with the row's maximum, so the rows need not be renormalised after top-p
    _mask_rows_(probs, rows, "min_p", lambda p: p.min_p > 0.0, min_p_mask, 0.0)
    return _exponential_race(probs, rows)


def _mask_rows_(values: torch.Tensor, rows: list[SamplingRow], name: str,
                applies: Callable[[SamplingParams], bool],
                mask: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], fill: float) -> None:
    """In place: set `fill` where `mask(values, param)` holds, on the rows whose params `applies` to."""
    chosen = [i for i, row in enumerate(rows) if applies(row.params)]
    if not chosen:
        return
    param = _row_param([rows[i] for i in chosen], name, values.device)
    if len(chosen) == len(rows):  # the usual case, one set of params for the batch: no gather and scatter
        values.masked_fill_(mask(values, param), fill)
        return
    idx = _index(chosen, values.device)
    subset = values[idx]
    values[idx] = subset.masked_fill_(mask(subset, param), fill)


def _exponential_race(probs: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """argmax(probs / E) with E ~ Exponential(1) picks token j with probability probs[j] / sum(probs).

    Rows with a generator draw their noise from it alone, so a seeded row samples the same whatever else is in the
    batch. E = -log(U) with U uniform in [0, 1): 4x cheaper than Tensor.exponential_ on CPU, and never 0, so a masked
    token (prob 0) can never win. argmax(probs / -log U) is computed as argmin(probs / log U), one pass fewer.
    """
    uniform = torch.empty_like(probs)
    unseeded = [i for i, row in enumerate(rows) if row.generator is None]
    if len(unseeded) == len(rows):
        uniform.uniform_()
    elif unseeded:
        uniform[_index(unseeded, probs.device)] = torch.rand(len(unseeded), probs.shape[1], device=probs.device)
    for i, row in enumerate(rows):
        if row.generator is not None:
            noise = torch.rand(probs.shape[1], generator=row.generator, device=row.generator.device)
            uniform[i] = noise.to(probs.device)
    return probs.div_(uniform.log_()).argmin(dim=-1)


def token_logprobs(raw_logits: torch.Tensor, rows: Sequence[SamplingRow],
                   token_ids: torch.Tensor) -> list[TokenLogprob | None]:
    """Logprob of each row's chosen token, and its `params.logprobs` most likely alternatives, from the raw logits;
    None for rows that did not ask for logprobs."""
    asked = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
    result: list[TokenLogprob | None] = [None] * len(rows)
    if not asked:
        return result
    idx = _index(asked, raw_logits.device)
    logprobs = raw_logits[idx].float().log_softmax(dim=-1)
    chosen_ids = token_ids[idx]
    chosen = logprobs.gather(1, chosen_ids.unsqueeze(1)).squeeze(1).tolist()
    most = max(rows[i].params.logprobs for i in asked)
    top_values, top_ids = (t.tolist() for t in logprobs.topk(most, dim=-1))
    for j, (i, token_id) in enumerate(zip(asked, chosen_ids.tolist())):
        k = rows[i].params.logprobs
        result[i] = TokenLogprob(token_id=token_id, logprob=chosen[j], top=list(zip(top_ids[j][:k], top_values[j][:k])))
    return result
