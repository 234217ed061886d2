"""Describes one mixed batch (prefill chunks and decodes) to the ops: its attention layout, and which rows use which
LoRA adapter slot."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch


@dataclass
class AttentionMetadata:
    """Layout of the flat token batch handed to the model for one step.

    Sequences are ordered decodes first: the first `num_decodes` sequences have exactly one query token each, so
    query rows [0, num_decodes) are decode tokens and the rest are prefill chunks.

    query_start_loc: int32 [B + 1], query rows of sequence b are query_start_loc[b]:query_start_loc[b + 1].
    seq_lens:        int32 [B], tokens in the KV cache for sequence b after this step's write (prefix + chunk).
    block_tables:    int32 [B, max_blocks], physical block ids, padded with 0 past a sequence's last block.
    The query token i of sequence b (0-based inside its chunk) sits at position seq_lens[b] - q_len_b + i and attends
    causally to cache positions 0..that position.
    query_lens_host / seq_lens_host: the same lengths as Python ints, so CPU code needs no device sync per layer.
    """

    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_tables: torch.Tensor
    num_decodes: int
    max_query_len: int
    max_seq_len: int
    query_lens_host: list[int]
    seq_lens_host: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)

    def suffixes(self, kept: list[int]) -> AttentionMetadata:
        """The layout of only the last kept[b] query rows of each sequence b (0 <= kept[b] <= its query length, not
        all 0): the same keys for fewer queries. Sequences that keep no row are left out."""
        seqs = [b for b, n in enumerate(kept) if n]
        query_lens = [kept[b] for b in seqs]
        seq_lens = [self.seq_lens_host[b] for b in seqs]
        device = self.seq_lens.device
        return AttentionMetadata(
            query_start_loc=torch.tensor([0, *accumulate(query_lens)], dtype=torch.int32, device=device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
            block_tables=self.block_tables.index_select(0, torch.tensor(seqs, dtype=torch.long, device=device)),
            num_decodes=count_decodes(query_lens), max_query_len=max(query_lens), max_seq_len=max(seq_lens),
            query_lens_host=query_lens, seq_lens_host=seq_lens)


def count_decodes(query_lens: list[int]) -> int:
    """Number of decode sequences: the run of one-token queries the scheduler puts first."""
    count = 0
    for n in query_lens:
        if n != 1:
            break
        count += 1
    return count


@dataclass(frozen=True)
class LoraRows:
    """The rows of a step that use LoRA adapters, grouped by adapter slot, for `add_lora`.

    order:    int32 [N], row indices, the rows of each slot together (rows of no adapter left out).
    segments: int32 [S, 3], (slot, start, end): order[start:end] are the rows of `slot`.
    spans:    the same segments as Python ints, so CPU code needs no device sync.
    """

    order: torch.Tensor
    segments: torch.Tensor
    spans: tuple[tuple[int, int, int], ...]

    @classmethod
    def from_slots(cls, row_slots: list[tuple[int, int, int]], device: torch.device) -> "LoraRows":
        """From (slot, first row, row after the last) runs of consecutive rows, in any order."""
        by_slot: dict[int, list[int]] = {}
        for slot, start, end in row_slots:
            by_slot.setdefault(slot, []).extend(range(start, end))
        order: list[int] = []
        spans = []
        for slot in sorted(by_slot):
            spans.append((slot, len(order), len(order) + len(by_slot[slot])))
            order.extend(by_slot[slot])
        return cls(torch.tensor(order, dtype=torch.int32, device=device),
                   torch.tensor(spans, dtype=torch.int32, device=device).view(-1, 3), tuple(spans))
