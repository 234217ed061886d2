"""Beam search over the paged KV cache, with HF `generate(num_beams=...)`'s selection and stopping rules.

A request with `use_beam_search` starts as one sequence (its prompt). Each round, every live beam reports its
next-token logits; once all have (usually in the same engine step, but a preempted beam reports later and the
others wait for it, holding their blocks), the group picks its next beams from the best 2W (more with several stop
tokens) continuations of all beams by summed logprob. Continuations ending in a stop token that rank among the
first W become finished hypotheses (score = summed logprob / generated_tokens ** length_penalty, generated tokens
counting the stop token); the best W non-stopping ones become the new beams. A beam chosen several times forks:
the copy shares its parent's full KV blocks and gets its own copy of the partly filled last block.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tide.engine.block_manager import BlockManager
from tide.engine.detokenizer import IncrementalDetokenizer
from tide.engine.model_runner import ModelRunner
from tide.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from tide.engine.request import RequestState
from tide.engine.scheduler import Scheduler
from tide.engine.sequence import Sequence


@dataclass
class Hypothesis:
    """A finished beam: its output tokens and length-penalised score."""

    score: float
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    cumulative_logprob: float
    finish_reason: str
    stop_reason: int | None = None


@dataclass
class _Candidate:
    parent: int  # index into the group's beams
    token_id: int
    score: float  # summed logprob of the beam with this token


class BeamGroup:
    """The live beams, their scores and the finished hypotheses of one request."""

    def __init__(self, state: RequestState, root: Sequence, eos_token_ids: set[int]) -> None:
        params = state.params
        self.state = state
        self.width = params.beam_width
        self.root = root
        self.beams = [root]
        self.scores = torch.zeros(1)  # float32, summed like HF so that near-ties break the same way
        self.finished: list[Hypothesis] = []  # best first, at most `width`
        self.rows: dict[int, torch.Tensor] = {}  # seq_id -> this round's logits
        self.improvable = True
        self.done = False
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        self.num_candidates = max(2, 1 + len(self.stop_ids)) * self.width
        self._next_index = 1
        self._row_logprobs = torch.empty(0)  # this round's log-softmax rows, one per beam

    @property
    def ready(self) -> bool:
        return all(beam.seq_id in self.rows for beam in self.beams)

    def select(self) -> list[_Candidate]:
        """Score this round's continuations; record finished ones; return the next beams' (parent, token) picks."""
        params, lead = self.state.params, self.beams[0]
        logprobs = torch.stack([self.rows.pop(b.seq_id) for b in self.beams]).float().log_softmax(dim=-1)
        self._row_logprobs = logprobs
        scored = logprobs
        if lead.num_output_tokens < params.min_tokens and self.stop_ids:
            scored = logprobs.clone()
            scored[:, list(self.stop_ids)] = float("-inf")
        vocab = logprobs.shape[1]
        total = (scored + self.scores.unsqueeze(1)).view(-1)
        top_scores, top_idx = total.topk(min(self.num_candidates, total.numel()))
        generated = lead.num_output_tokens + 1
        at_limit = lead.num_tokens + 1 >= lead.max_total_tokens
        penalised = (top_scores / generated ** params.length_penalty).tolist()
        running: list[_Candidate] = []
        for rank, (flat, score) in enumerate(zip(top_idx.tolist(), top_scores.tolist())):
            cand = _Candidate(flat // vocab, flat % vocab, score)
            if at_limit or cand.token_id in self.stop_ids:
                if rank < self.width:
                    self._add_finished(cand, penalised[rank], at_limit)
            elif len(running) < self.width:
                running.append(cand)
        if at_limit or not running:  # no beam can go on (the second only with a vocabulary of stop tokens)
            self.done = True
            return []
        self._update_stop(running[0].score, generated)
        return running

    def _add_finished(self, cand: _Candidate, score: float, at_limit: bool) -> None:
        parent = self.beams[cand.parent]
        lp = self.token_logprob(cand.parent, cand.token_id)
        stopped = cand.token_id in self.stop_ids
        self.finished.append(Hypothesis(
            score=score, token_ids=parent.output_token_ids + [cand.token_id],
            logprobs=None if parent.logprobs is None else parent.logprobs + [lp],
            cumulative_logprob=parent.cumulative_logprob + lp.logprob,
            finish_reason="stop" if stopped else "length",
            stop_reason=cand.token_id if stopped and cand.token_id in self.state.params.stop_token_ids else None))
        self.finished.sort(key=lambda h: -h.score)
        del self.finished[self.width:]

    def _update_stop(self, best_running: float, generated: int) -> None:
        """HF's rule: stop once `width` hypotheses are finished and (early_stopping=True, or) no running beam can
        beat the worst of them at the best length it could still reach."""
        params = self.state.params
        length = generated
        if params.early_stopping == "never" and params.length_penalty > 0.0:
            length = self.beams[0].max_total_tokens - self.beams[0].num_prompt_tokens
        full = len(self.finished) == self.width
        best_possible = float(torch.tensor(best_running) / length ** params.length_penalty)
        self.improvable = self.improvable and (not full or best_possible > self.finished[-1].score)
        self.done = not self.improvable or (full and params.early_stopping is True)

    def token_logprob(self, parent: int, token_id: int) -> TokenLogprob:
        """The chosen token's logprob (from the raw logits, before the min_tokens mask), with top alternatives."""
        row = self._row_logprobs[parent]
        k = self.state.params.logprobs
        top: list[tuple[int, float]] = []
        if k:
            values, ids = row.topk(k)
            top = list(zip(ids.tolist(), values.tolist()))
        return TokenLogprob(token_id=token_id, logprob=float(row[token_id]), top=top)

    def next_index(self) -> int:
        self._next_index += 1
        return self._next_index - 1


class BeamSearch:
    """The engine's beam-search groups: takes their rows out of each step's logits and advances them.

    `share_blocks=False` makes forks copy every block of their parent instead of sharing the full ones (only to
    measure what sharing saves).
    """

    def __init__(self, scheduler: Scheduler, block_manager: BlockManager, runner: ModelRunner, tokenizer,
                 eos_token_ids: set[int], share_blocks: bool = True) -> None:
        self.scheduler = scheduler
        self.block_manager = block_manager
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.share_blocks = share_blocks
        self.groups: dict[str, BeamGroup] = {}

    def check(self, state: RequestState, max_total_tokens: int, max_num_seqs: int) -> str | None:
        """Why this engine cannot run the request's beam search (None if it can, or if it asks for none): every
        beam of a group must be able to hold its KV at once, and to run in one step."""
        params, bm = state.params, self.block_manager
        if not params.use_beam_search:
            return None
        if not self.runner.copies_blocks:
            return "use_beam_search is not supported with tensor_parallel_size > 1 yet"
        width = params.beam_width
        if width > max_num_seqs:
            return f"best_of ({width} beams) exceeds this engine's max_num_seqs ({max_num_seqs})"
        n_prompt = len(state.prompt_token_ids)
        limit = max_total_tokens if params.max_tokens is None else min(max_total_tokens, n_prompt + params.max_tokens)
        shared = n_prompt // bm.block_size
        needed = shared + width * (bm.blocks_needed(limit) - shared)
        if needed > bm.num_blocks:
            return (f"beam search with {width} beams up to {limit} tokens needs up to {needed} KV blocks, but this "
                    f"engine has {bm.num_blocks}: lower best_of or max_tokens")
        return None

    def start(self, state: RequestState) -> None:
        """Track a beam-search request whose single sequence (the prompt) has just been queued."""
        if state.params.use_beam_search:
            self.groups[state.request_id] = BeamGroup(state, state.seqs[0], self.eos_token_ids)

    def step(self, logits: torch.Tensor, rows: list[Sequence]) -> tuple[torch.Tensor, list[Sequence], list[str]]:
        """Take the beam rows out of a step's logits and advance every group whose beams have all reported.

        Returns the other rows' logits and sequences, and the ids of requests whose beam search ended.
        """
        keep: list[int] = []
        touched: dict[str, BeamGroup] = {}
        for i, seq in enumerate(rows):
            group = self.groups.get(seq.request_id) if seq.params.use_beam_search else None
            if group is None:
                keep.append(i)
                continue
            group.rows[seq.seq_id] = logits[i]
            touched[seq.request_id] = group
        copies: list[tuple[int, int]] = []
        ended = []
        for request_id, group in touched.items():
            if not group.ready:
                continue
            copies += self._advance(group)
            if group.done:
                ended.append(request_id)
        self.runner.copy_blocks(copies)
        if len(keep) == len(rows):
            return logits, rows, ended
        return logits[torch.tensor(keep, dtype=torch.long, device=logits.device)], [rows[i] for i in keep], ended

    def _advance(self, group: BeamGroup) -> list[tuple[int, int]]:
        picks = group.select()
        metrics = group.state.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = time.monotonic()
        if group.done:
            return []
        chosen = {c.parent for c in picks}
        for i, beam in enumerate(group.beams):
            if i not in chosen:
                self.scheduler.finish(beam)  # dropped beams give their blocks back before the forks take some
        copies: list[tuple[int, int]] = []
        seqs: list[Sequence] = []
        used: set[int] = set()
        for cand in picks:  # fork before any token is appended: a fork copies its parent as it was
            parent = group.beams[cand.parent]
            if cand.parent not in used:
                used.add(cand.parent)
                seqs.append(parent)
                continue
            child = parent.fork(group.next_index())
            copies += self.block_manager.fork(parent, child, self.share_blocks)
            if child.block_table:
                self.scheduler.adopt(child)
            else:
                self.scheduler.add(child)  # the parent holds no blocks either (it was preempted): recompute
            seqs.append(child)
        for seq, cand in zip(seqs, picks):
            seq.append_token(cand.token_id, group.token_logprob(cand.parent, cand.token_id))
        group.beams = seqs
        group.scores = torch.tensor([c.score for c in picks], dtype=torch.float32)
        group.state.seqs = list(seqs)
        return copies

    def finish(self, state: RequestState) -> RequestOutput | None:
        """A beam-search request's output (its `n` best finished beams, best first) once it ended or was aborted;
        None for a request that is not searching beams."""
        group = self.groups.pop(state.request_id, None)
        if group is None:
            return None
        for beam in group.beams:
            if not beam.is_finished:
                self.scheduler.finish(beam)
        hyps = group.finished if group.done else [self._aborted(b) for b in group.beams]
        outputs = [CompletionOutput(index=i, text=self._text(state, h.token_ids), token_ids=h.token_ids,
                                    finish_reason=h.finish_reason, stop_reason=h.stop_reason, logprobs=h.logprobs,
                                    cumulative_logprob=h.cumulative_logprob)
                   for i, h in enumerate(hyps[:state.params.n])]
        state.metrics.completion_tokens = sum(len(o.token_ids) for o in outputs)
        state.metrics.cached_prompt_tokens = group.root.num_cached_tokens
        return RequestOutput(state.request_id, state.prompt_token_ids, outputs, state.metrics)

    @staticmethod
    def _aborted(beam: Sequence) -> Hypothesis:
        return Hypothesis(beam.cumulative_logprob, beam.output_token_ids, beam.logprobs, beam.cumulative_logprob,
                          "abort")

    def _text(self, state: RequestState, token_ids: list[int]) -> str:
        detok = IncrementalDetokenizer(self.tokenizer, state.prompt_token_ids, state.params.skip_special_tokens)
        for token_id in token_ids:
            detok.append(token_id)
        return detok.text
