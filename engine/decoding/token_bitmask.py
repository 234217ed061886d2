"""Packed token bitmasks: bit j of word w of a row allows token 32*w + j. Pure torch, so it runs on any device."""
from __future__ import annotations

import torch


def bitmask_words(vocab_size: int) -> int:
    """Number of int32 words per row for a vocabulary of `vocab_size` tokens."""
    return (vocab_size + 31) // 32


def allow_only_(bitmask: torch.Tensor, row: int, token_id: int) -> None:
    """In place: row `row` of `bitmask` allows `token_id` alone."""
    bitmask[row] = 0
    bit = 1 << (token_id % 32)
    bitmask[row, token_id // 32] = bit - (1 << 32) if bit >= 1 << 31 else bit  # int32 holds bit 31 as negative


def apply_token_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """In place: set to -inf the logits of tokens that `bitmask` ([rows, words] int32, on any device) forbids.

    The bitmask is built on the CPU and unpacked on the logits' device, so a GPU only receives rows * vocab / 32 words.
    """
    vocab = logits.shape[1]
    words = bitmask.to(logits.device, non_blocking=True)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)
    if allowed.shape[1] < vocab:
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]))
    logits.masked_fill_(~allowed[:, :vocab], float("-inf"))
