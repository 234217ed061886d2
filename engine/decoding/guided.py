"""Guided decoding with llguidance: grammars compiled once per constraint, one matcher per sequence, token bitmasks
for the sampler, and fast-forward through the tokens a grammar forces.

Where the grammar forces bytes (a fixed key, a closing brace) the matcher's canonical tokens for them are the only
token allowed, with or without fast-forward; fast-forward just appends them at once, so the next step computes them
as one chunk instead of one decode step each, and the output is the same.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence as Seq

import llguidance
import llguidance.hf
import torch

from tide.engine.decoding.guided_params import GuidedParams
from tide.engine.decoding.token_bitmask import allow_only_, bitmask_words
from tide.engine.request import RequestState
from tide.engine.sampling_params import SamplingParams
from tide.engine.sequence import Sequence

logger = logging.getLogger("tide.engine")

# JSON is laid out as json.dumps does by default, with no other whitespace: a model trained on JSON writes it that
# way, every separator is forced (so fast-forward can append it), and a weak model cannot pad the output with blanks
# until max_tokens. A schema may still set its own layout under "x-guidance".
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GuidedError(ValueError):
    """A constraint that cannot be compiled; the message names the field and the reason."""

    code = "invalid_guided"


class Guide:
    """One sequence's place in its grammar. It follows the output tokens, which a preempted sequence keeps."""

    def __init__(self, matcher: llguidance.LLMatcher, fast_forward: bool) -> None:
        self.matcher = matcher
        self.fast_forward = fast_forward

    def fill_row(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the tokens allowed next into row `row` of a CPU int32 bitmask."""
        forced = self.matcher.compute_ff_tokens()
        if forced:
            # llguidance's own mask already allows only this token in forced text with SmolLM2's tokenizer; saying
            # so keeps fast-forward exact with any tokenizer
            allow_only_(bitmask, row, forced[0])
            return
        words = bitmask[row]
        self.matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * words.element_size())

    def accept(self, token_id: int) -> bool:
        """Advance past `token_id`; False if the grammar rejects it."""
        return self.matcher.consume_token(token_id)

    @property
    def is_complete(self) -> bool:
        """Nothing but EOS may follow."""
        return self.matcher.is_stopped()

    def forced_token(self) -> int | None:
        """The next token when the grammar leaves only one, else None."""
        forced = self.matcher.compute_ff_tokens()
        return forced[0] if forced else None


class GuidedDecoding:
    """Compiles constraints for one tokenizer and vocabulary, and steers the engine's guided sequences."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: set[int], cache_size: int = 256) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_token_ids = sorted(eos_token_ids)
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._cache_size = cache_size
        self.num_compiled = 0

    def _llguidance_tokenizer(self) -> llguidance.LLTokenizer:
        # built on first use: it takes about a second, and most engines never see a guided request
        if self._lltokenizer is None:
            self._lltokenizer = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self._vocab_size,
                                                             eos_token=self._eos_token_ids)
        return self._lltokenizer

    def compile(self, guided: GuidedParams) -> llguidance.LLMatcher:
        """The constraint's matcher in its start state, compiled once and then taken from a cache.

        Raises GuidedError naming the field (e.g. guided.json_schema) when the constraint cannot be compiled.
        """
        key = guided.cache_key()
        matcher = self._compiled.get(key)
        if matcher is not None:
            self._compiled.move_to_end(key)
            return matcher
        try:
            grammar = _grammar(guided)
        except ValueError as exc:
            raise GuidedError(f"guided.{guided.kind}: {exc}") from exc
        matcher = llguidance.LLMatcher(self._llguidance_tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise GuidedError(f"guided.{guided.kind}: cannot be compiled: {matcher.get_error().strip()}")
        self.num_compiled += 1
        self._compiled[key] = matcher
        if len(self._compiled) > self._cache_size:
            self._compiled.popitem(last=False)
        return matcher

    def guide(self, params: SamplingParams) -> Guide | None:
        """A fresh Guide for one sequence of a request, or None for an unguided one."""
        if params.guided is None:
            return None
        # forced tokens get no logprobs of their own, so a request asking for logprobs samples every token
        fast_forward = params.guided.fast_forward and params.logprobs is None
        return Guide(self.compile(params.guided).deep_copy(), fast_forward)

    def bitmask(self, seqs: Seq[Sequence]) -> torch.Tensor | None:
        """[len(seqs), words] int32 bitmask of allowed next tokens (all allowed for unguided rows); None if no row
        is guided. Always built on the CPU: the sampler moves it to the logits' device."""
        guided = [(i, seq.guide) for i, seq in enumerate(seqs) if seq.guide is not None]
        if not guided:
            return None
        bitmask = torch.full((len(seqs), bitmask_words(self._vocab_size)), -1, dtype=torch.int32)
        for row, guide in guided:
            guide.fill_row(bitmask, row)
        return bitmask

    def advance(self, state: RequestState, seq: Sequence, token_id: int, eos_token_ids: set[int]) -> tuple[bool, int]:
        """Feed a sampled token to the sequence's grammar, then append the tokens the grammar forces after it.

        Returns (whether the sequence is finished, number of tokens appended). Forced tokens go through the same stop
        checks as sampled ones, so stop strings and max_tokens cut them exactly where sampling would have.
        """
        guide, forced = seq.guide, 0
        while True:
            if not guide.accept(token_id):
                logger.warning("request %s: grammar rejected token %d (%s); stopping it",
                               seq.request_id, token_id, guide.matcher.get_error())
                seq.finish_reason = "stop"
                return True, forced
            if guide.is_complete:
                seq.finish_reason = "stop"
                return True, forced
            token_id = guide.forced_token() if guide.fast_forward else None
            if token_id is None:
                return False, forced
            seq.append_token(token_id, None)
            forced += 1
            if state.check_stop(seq, token_id, eos_token_ids):
                return True, forced


def _grammar(guided: GuidedParams) -> str:
    """The llguidance grammar for a constraint; ValueError for a schema that is not a JSON object."""
    if guided.json_schema is not None:
        return llguidance.LLMatcher.grammar_from_json_schema(guided.json_schema, defaults=JSON_LAYOUT)
    if guided.regex is not None:
        return llguidance.LLMatcher.grammar_from_regex(guided.regex)
    # Lark string literals take JSON's escapes, so any choice text (quotes, backslashes, newlines) is spelt exactly
    alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in guided.choice)
    return llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}")
