"""One step's inputs as rank 0 hands them to the other ranks: a small picklable header and one int64 payload.

The header (lengths, as Python ints) goes through each worker's pipe, which also wakes it; the payload (token ids,
positions, slot mapping, block tables) is broadcast over torch.distributed from the tensors rank 0 already built on
its device, so on GPU it never goes through host memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from tide.engine.models.llama import ForwardContext, LastLayerRows
from tide.kernels.metadata import AttentionMetadata


@dataclass(frozen=True)
class StepHeader:
    """Everything about a step's layout that is not a per-token tensor."""

    num_tokens: int
    max_blocks: int
    num_decodes: int
    query_lens: list[int]
    seq_lens: list[int]
    kept: list[int] | None  # rows per sequence the last layer computes (ForwardContext.last_rows); None: all

    @property
    def payload_len(self) -> int:
        return 3 * self.num_tokens + len(self.seq_lens) * self.max_blocks


def pack_step(input_ids: torch.Tensor, ctx: ForwardContext) -> tuple[StepHeader, torch.Tensor]:
    """Rank 0: the header for the pipes and the payload to broadcast."""
    attn = ctx.attn
    header = StepHeader(num_tokens=input_ids.numel(), max_blocks=attn.block_tables.shape[1],
                        num_decodes=attn.num_decodes, query_lens=attn.query_lens_host, seq_lens=attn.seq_lens_host,
                        kept=None if ctx.last_rows is None else ctx.last_rows.kept)
    payload = torch.cat([input_ids, ctx.positions, ctx.slot_mapping, attn.block_tables.flatten().long()])
    return header, payload


def receive_step(header: StepHeader, device: torch.device, cos_sin_cache: torch.Tensor):
    """Ranks 1..N-1: receive the payload announced by `header`; returns (input_ids, ForwardContext)."""
    payload = torch.empty(header.payload_len, dtype=torch.int64, device=device)
    dist.broadcast(payload, src=0)
    t = header.num_tokens
    query_start_loc = [0]
    for n in header.query_lens:
        query_start_loc.append(query_start_loc[-1] + n)
    attn = AttentionMetadata(
        query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(header.seq_lens, dtype=torch.int32, device=device),
        block_tables=payload[3 * t:].view(len(header.seq_lens), header.max_blocks).int(),
        num_decodes=header.num_decodes,
        max_query_len=max(header.query_lens),
        max_seq_len=max(header.seq_lens),
        query_lens_host=header.query_lens,
        seq_lens_host=header.seq_lens,
    )
    ctx = ForwardContext(positions=payload[t:2 * t], slot_mapping=payload[2 * t:3 * t], attn=attn,
                         cos_sin_cache=cos_sin_cache,
                         last_rows=None if header.kept is None else LastLayerRows.of(attn, header.kept))
    return payload[:t], ctx
