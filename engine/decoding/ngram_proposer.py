"""Prompt-lookup proposals: the tokens that followed the latest earlier occurrence of a sequence's last n tokens."""
from __future__ import annotations

from array import array

from tide.engine.sequence import Sequence

_ITEM = array("i").itemsize


def ngram_proposal(token_ids: list[int], num_tokens: int, ngram_min: int, ngram_max: int) -> list[int]:
    """Up to `num_tokens` tokens that followed the most recent earlier occurrence of the last n tokens.

    n runs from `ngram_max` down to `ngram_min`; the longest suffix that occurred before wins. Empty when none did.
    """
    length = len(token_ids)
    if length < 2 or num_tokens < 1:
        return []
    # bytes.rfind searches in C; a hit that does not start on a token boundary is skipped by searching again.
    haystack = array("i", token_ids).tobytes()
    for n in range(min(ngram_max, length - 1), ngram_min - 1, -1):
        needle = haystack[(length - n) * _ITEM:]
        end = (length - 1) * _ITEM  # the match must end before the last token, so at least one token follows it
        while True:
            hit = haystack.rfind(needle, 0, end)
            if hit < 0:
                break
            if hit % _ITEM == 0:
                follow = hit // _ITEM + n
                return token_ids[follow:follow + num_tokens]
            end = hit + len(needle) - 1
    return []


class NgramProposer:
    """Proposes from each sequence's own prompt and output; needs no model."""

    def __init__(self, ngram_min: int, ngram_max: int) -> None:
        self.ngram_min = ngram_min
        self.ngram_max = ngram_max

    def propose(self, seqs: list[Sequence], limits: list[int]) -> list[list[int]]:
        """At most `limits[i]` proposed tokens to follow `seqs[i]`'s tokens (possibly none)."""
        return [ngram_proposal(seq.token_ids, k, self.ngram_min, self.ngram_max) for seq, k in zip(seqs, limits)]
