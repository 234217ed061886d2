"""Texts packed into one forward: flat token ids with where each text starts, the padded layout attention uses, and
the choice of which waiting texts go together (similar lengths, under a token budget, the oldest always among them).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate

import torch


@dataclass
class PackedBatch:
    """`B` texts back to back: `input_ids`/`positions`/`seq_index` [T]; `pad_index` [T] each token's row in the
    padded [B * L] layout and `key_mask` [B, 1, 1, L] True on real tokens (both None when every text has length L,
    so flat and padded coincide)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    lengths: list[int]
    seq_index: torch.Tensor  # [T] which text each token belongs to
    starts: torch.Tensor  # [B] index of each text's first token
    pad_index: torch.Tensor | None
    key_mask: torch.Tensor | None
    _scratch: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def build(cls, token_ids: Sequence[Sequence[int]], device: torch.device) -> "PackedBatch":
        lengths = [len(ids) for ids in token_ids]
        longest = max(lengths)
        positions = [p for n in lengths for p in range(n)]
        seq_index = [i for i, n in enumerate(lengths) for _ in range(n)]
        pad_index = key_mask = None
        if min(lengths) != longest:
            pad_index = torch.tensor([i * longest + p for i, p in zip(seq_index, positions)], device=device)
            mask = torch.arange(longest).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # [B, L]
            key_mask = mask[:, None, None, :].to(device)
        as_long = dict(dtype=torch.int64, device=device)
        return cls(torch.tensor([t for ids in token_ids for t in ids], **as_long), torch.tensor(positions, **as_long),
                   lengths, torch.tensor(seq_index, **as_long), torch.tensor([0, *accumulate(lengths[:-1])], **as_long),
                   pad_index, key_mask)

    @property
    def num_seqs(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[T, D] -> [B * L, D] with zeros where a text is shorter than L. The padded buffer is kept and reused by
        the next call of the same width: only real rows are written, so the padding stays zero."""
        if self.pad_index is None:
            return x
        if self._scratch is None or self._scratch.shape[-1] != x.shape[-1] or self._scratch.dtype != x.dtype:
            self._scratch = x.new_zeros(self.num_seqs * self.max_len, x.shape[-1])
        return self._scratch.index_copy_(0, self.pad_index, x)

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [T, ...]: each text's real tokens, back to back."""
        if self.pad_index is None:
            return x.reshape(-1, *x.shape[2:])
        return x[self.seq_index, self.positions]


def choose_batch(lengths: Sequence[int], anchor: int, token_budget: int, max_seqs: int) -> range:
    """Which waiting texts run together, as a range of positions in `lengths` (sorted ascending): the `anchor` (the
    text that has waited longest), then its nearest neighbours by length while the padded size (texts x longest)
    stays within `token_budget` and the count within `max_seqs`.

    Grouping by length keeps padding low; anchoring on the oldest text means none waits behind a stream of others.
    """
    lo = hi = anchor
    own = longest = lengths[anchor]
    while hi - lo + 1 < max_seqs:
        # A shorter text leaves the padded width as it is; a longer one widens it to its own length.
        fits_below = lo > 0 and (hi - lo + 2) * longest <= token_budget
        fits_above = hi + 1 < len(lengths) and (hi - lo + 2) * lengths[hi + 1] <= token_budget
        if fits_below and (not fits_above or own - lengths[lo - 1] <= lengths[hi + 1] - own):
            lo -= 1
        elif fits_above:
            hi += 1
            longest = lengths[hi]
        else:
            break
    return range(lo, hi + 1)
