"""Speculative decoding for greedy rows: drafts proposed after one step are verified in the next step's forward.

After a greedy sequence samples a token, a proposer (prompt lookup or a draft model) appends up to k draft tokens to
its `token_ids` (`num_draft_tokens` marks them). The scheduler computes the last real token and the drafts as one
chunk, the runner returns logits at each of those positions, and `verify` takes the target's own choice at each: the
drafts that agree are kept, plus the target's next token (the bonus), and the rest are cut, their KV blocks given
back. Every kept token is the target's greedy choice, so the output equals non-speculative decoding.

Sampled rows (temperature > 0) are not speculated: they decode one token per step as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from tide.engine.block_manager import BlockManager
from tide.engine.config import EngineConfig
from tide.engine.sampler import Sampler, SamplerOutput
from tide.engine.sampling_params import SamplingParams
from tide.engine.scheduler import SchedulerOutput
from tide.engine.sequence import Sequence, SequenceStatus


class Proposer(Protocol):
    def propose(self, seqs: list[Sequence], limits: list[int]) -> list[list[int]]:
        """At most `limits[i]` tokens to follow `seqs[i]`'s tokens; may be called with no sequences (to tidy up)."""


@dataclass
class _VerifyRow:
    """The sampler's view of a sequence as if its first drafts were already output (penalties and min_tokens see
    exactly the output they would see without speculation)."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None = None


@dataclass
class Verified:
    """The tokens a step appends: `seqs[i]` gets `sampled.token_ids[i]`, in order; a sequence whose drafts were
    accepted appears once per kept token. `counts` holds (sequence, drafts proposed, drafts accepted)."""

    seqs: list[Sequence]
    sampled: SamplerOutput
    counts: list[tuple[Sequence, int, int]]


class Speculator:
    """Places draft tokens on eligible running sequences and verifies them after the target's forward."""

    def __init__(self, proposer: Proposer, block_manager: BlockManager, num_tokens: int, max_running: int,
                 reserve_blocks: int, vocab_size: int) -> None:
        self.proposer = proposer
        self.block_manager = block_manager
        self.num_tokens = num_tokens
        self.max_running = max_running
        self.reserve_blocks = reserve_blocks
        self.vocab_size = vocab_size
        self.num_proposed = 0  # drafts verified so far
        self.num_accepted = 0

    # ---- before the step ---------------------------------------------------------------------------------------

    def propose(self, running: list[Sequence]) -> None:
        """Give each eligible decoding sequence up to `num_tokens` drafts, unless more than `max_running` run:
        then the step is compute-bound and verifying drafts costs more than it saves."""
        seqs, limits = [], []
        if len(running) <= self.max_running:
            bm = self.block_manager
            spare = bm.num_free_blocks - self.reserve_blocks - len(running)  # leave room for plain decodes
            for seq in running:
                k = min(self.num_tokens, seq.max_total_tokens - seq.num_tokens)
                extra = bm.blocks_needed(seq.num_tokens + k) - bm.blocks_needed(seq.num_tokens)
                if k > 0 and extra <= spare and _eligible(seq):
                    spare -= extra
                    seqs.append(seq)
                    limits.append(k)
        for seq, draft in zip(seqs, self.proposer.propose(seqs, limits)):
            draft = draft[:next((i for i, t in enumerate(draft) if not 0 <= t < self.vocab_size), len(draft))]
            seq.token_ids.extend(draft)
            seq.num_draft_tokens = len(draft)

    def fit(self, out: SchedulerOutput) -> None:
        """Cut the drafts the scheduler will not compute this step: all of a preempted sequence's (it is recomputed
        from its real tokens), and those past a sequence's share of the token budget."""
        for seq in out.preempted:
            self._cut(seq, seq.num_draft_tokens)
        for seq, num_new in out.scheduled:
            if seq.num_draft_tokens:
                self._cut(seq, min(seq.num_draft_tokens, seq.num_uncomputed_tokens - num_new))

    # ---- after the forward -------------------------------------------------------------------------------------

    def verify(self, logits: torch.Tensor, seqs: list[Sequence], sampler: Sampler, eos_token_ids: set[int],
               bitmask: torch.Tensor | None = None) -> Verified:
        """Take the target's token at every logits row (as the runner lays them out), keep each sequence's longest
        run of drafts that agree with them plus the next target token, and roll the rest back. `bitmask` has one
        row per sequence (guided ones carry no drafts, so a sequence's row stands for all of its logits rows)."""
        rows: list = []
        row_seq: list[int] = []
        for i, seq in enumerate(seqs):
            rows.append(seq)
            drafts = seq.token_ids[seq.num_tokens - seq.num_draft_tokens:]
            rows.extend(_VerifyRow(seq.params, seq.prompt_token_ids, seq.output_token_ids + drafts[:j + 1])
                        for j in range(len(drafts)))
            row_seq += [i] * (len(drafts) + 1)
        if bitmask is not None:
            bitmask = bitmask[torch.tensor(row_seq)]
        sampled = sampler(logits, rows, eos_token_ids, bitmask)
        out = Verified([], SamplerOutput([], []), [])
        at = 0
        for seq in seqs:
            num_drafts = seq.num_draft_tokens
            drafts = seq.token_ids[seq.num_tokens - num_drafts:]
            targets = sampled.token_ids[at:at + num_drafts + 1]
            accepted = 0
            while accepted < num_drafts and targets[accepted] == drafts[accepted]:
                accepted += 1
            out.seqs.extend([seq] * (accepted + 1))
            out.sampled.token_ids.extend(targets[:accepted + 1])
            out.sampled.logprobs.extend(sampled.logprobs[at:at + accepted + 1])
            if num_drafts:
                out.counts.append((seq, num_drafts, accepted))
                self.num_proposed += num_drafts
                self.num_accepted += accepted
                self._cut(seq, num_drafts)
                # the accepted drafts' KV stays: the same tokens are appended again as output right after this
                self.block_manager.roll_back(seq, seq.num_tokens + accepted)
            at += num_drafts + 1
        return out

    def _cut(self, seq: Sequence, count: int) -> None:
        if count > 0:
            del seq.token_ids[-count:]
            seq.num_draft_tokens -= count
            self.block_manager.trim_hashes(seq)


def _eligible(seq: Sequence) -> bool:
    """A greedy sequence that is decoding (one token left to compute) and carries no drafts yet; beams and guided
    rows choose their tokens by their own rules and are never drafted for."""
    return (seq.status is SequenceStatus.RUNNING and seq.num_draft_tokens == 0 and seq.num_uncomputed_tokens == 1
            and seq.params.greedy and seq.params.speculate and seq.guide is None
            and not seq.params.use_beam_search)


class NoSpeculation:
    """The speculator of an engine that does not speculate: every row samples its one token, nothing is drafted."""

    num_proposed = 0
    num_accepted = 0

    def propose(self, running: list[Sequence]) -> None:
        pass

    def fit(self, out: SchedulerOutput) -> None:
        pass

    def verify(self, logits: torch.Tensor, seqs: list[Sequence], sampler: Sampler, eos_token_ids: set[int],
               bitmask: torch.Tensor | None = None) -> Verified:
        return Verified(seqs, sampler(logits, seqs, eos_token_ids, bitmask), [])


def build_speculator(config: EngineConfig, parts, max_model_len: int,
                     reserve_blocks: int) -> Speculator | NoSpeculation:
    """The engine's speculator for `config.speculative` ("off" gives `NoSpeculation`)."""
    if config.speculative == "off":
        return NoSpeculation()
    if config.speculative == "ngram":
        from tide.engine.decoding.ngram_proposer import NgramProposer

        proposer: Proposer = NgramProposer(config.spec_ngram_min, config.spec_ngram_max)
    else:
        from tide.engine.decoding.draft_proposer import DraftProposer

        proposer = DraftProposer.load(config, parts, max_model_len)
    return Speculator(proposer, parts.block_manager, config.num_speculative_tokens, config.spec_max_running,
                      reserve_blocks, parts.vocab_size)
