"""Turns a scheduled step into flat tensors, runs the model over the paged KV cache, returns logits."""
from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate
from typing import Protocol

import torch

from tide.engine.kv_pages import PageWarmer, anonymous_zeros
from tide.engine.models.llama import ForwardContext, LastLayerRows, LlamaForCausalLM, LowRankUpdates
from tide.engine.sampler import argmax_decides
from tide.engine.sequence import Sequence
from tide.kernels import build_cos_sin_cache
from tide.kernels.metadata import AttentionMetadata, count_decodes


class StepAdapters(Protocol):
    """Which rows of a step use which LoRA adapter (`engine/lora/registry.py`); None when no row uses one."""

    def batch(self, scheduled: list[tuple[Sequence, int]]) -> LowRankUpdates | None: ...


class ModelRunner:
    """Owns the model and its KV cache: [layers, 2 (k/v), num_blocks, block_size, kv_heads, head_dim]."""

    def __init__(self, model: LlamaForCausalLM, num_blocks: int, block_size: int, max_model_len: int,
                 device: torch.device, dtype: torch.dtype, adapters: StepAdapters | None = None) -> None:
        args = model.args
        self.model = model
        self.adapters = adapters  # the LoRA registry: which rows of a step use which adapter
        self.block_size = block_size
        self.device = device
        shape = (args.num_layers, 2, num_blocks, block_size, args.num_kv_heads, args.head_dim)
        self.kv_cache = _zeroed_cache(shape, dtype, device)
        self.kv_caches = [(layer[0], layer[1]) for layer in self.kv_cache]
        # A large CPU cache gets its pages mapped in the background, just ahead of the blocks the steps write.
        self.page_warmer = PageWarmer.start(self.kv_cache) if _worth_warming(self.kv_cache) else None
        self.cos_sin_cache = build_cos_sin_cache(
            args.inv_freq, max_model_len, args.attention_scaling, dtype).to(device)

    @staticmethod
    def kv_bytes_per_token(model: LlamaForCausalLM, dtype: torch.dtype) -> int:
        args = model.args
        return 2 * args.num_layers * args.num_kv_heads * args.head_dim * torch.empty((), dtype=dtype).element_size()

    copies_blocks = True  # copy_blocks reaches the whole KV cache (not so for a tensor-parallel group)

    @torch.inference_mode()
    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole KV blocks src -> dst in every layer (a forked beam's own copy of a partly filled block)."""
        if not pairs:
            return
        src = torch.tensor([s for s, _ in pairs], dtype=torch.int64, device=self.device)
        dst = torch.tensor([d for _, d in pairs], dtype=torch.int64, device=self.device)
        self.kv_cache.index_copy_(2, dst, self.kv_cache.index_select(2, src))

    def run(self, scheduled: list[tuple[Sequence, int]]) -> tuple[torch.Tensor, list[Sequence]]:
        """Compute the scheduled tokens for a caller that reads only each logits row's argmax (the draft proposer);
        return the logits for the sequences that reach their end: one row each, or 1 + num_draft_tokens consecutive
        rows for a sequence carrying draft tokens (see `forward`)."""
        logits, sampling, _ = self.forward(scheduled, [], argmax_only=_any_row)
        return logits, sampling

    @torch.inference_mode()
    def forward(self, scheduled: list[tuple[Sequence, int]], hidden_rows: list[int],
                argmax_only: Callable[[Sequence], bool] | None = None
                ) -> tuple[torch.Tensor, list[Sequence], torch.Tensor]:
        """Compute the scheduled tokens; return logits (in the model's dtype: the sampler widens only what it edits)
        for the sequences that reach their end, those sequences, and the final hidden states at `hidden_rows` (rows
        of the step's flat token batch, in `scheduled` order) for what scores prompt tokens
        (engine/prompt_logprobs.py). When `argmax_only` (default: `reads_argmax_only`) holds for every sequence
        that samples, a head with a screen gives scores exact only where they can be a row's largest
        (LlamaForCausalLM.compute_logits)."""
        if self.page_warmer is not None:
            self.page_warmer.reach(max(seq.block_table[-1] for seq, _ in scheduled))
        input_ids, ctx, logits_indices, sampling = self._prepare(scheduled, bool(hidden_rows))
        hidden = self.model(input_ids, ctx, self.kv_caches)
        asked = hidden[torch.tensor(hidden_rows, dtype=torch.long, device=hidden.device)]
        if not sampling:
            return torch.empty(0), [], asked
        # with last_rows set, the model returned just the rows that sample
        rows = hidden if ctx.last_rows is not None else hidden[logits_indices]
        only = all(map(argmax_only or reads_argmax_only, sampling))
        return self.model.compute_logits(rows, argmax_only=only), sampling, asked

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary scores of final hidden states (any rows of any step)."""
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Final hidden states [T, hidden] of whole texts packed back to back (`lengths` tokens each), as one prefill
        that keeps nothing: the KV cache is scratch, each text in the blocks after the previous one's. The seam
        decoder models embed through (engine/encoder/decoder.py), on a runner no scheduler allocates from."""
        bs, dev = self.block_size, self.device
        counts = [-(-n // bs) for n in lengths]
        firsts = [0, *accumulate(counts)]
        if firsts[-1] > self.kv_cache.shape[2]:
            raise ValueError(f"{sum(lengths)} tokens need {firsts[-1]} KV blocks; the scratch cache holds "
                             f"{self.kv_cache.shape[2]}")
        tables = [list(range(f, f + c)) + [0] * (max(counts) - c) for f, c in zip(firsts, counts)]
        as_int = dict(dtype=torch.int32, device=dev)
        attn = AttentionMetadata(
            query_start_loc=torch.tensor([0, *accumulate(lengths)], **as_int),
            seq_lens=torch.tensor(lengths, **as_int), block_tables=torch.tensor(tables, **as_int),
            num_decodes=count_decodes(lengths), max_query_len=max(lengths), max_seq_len=max(lengths),
            query_lens_host=list(lengths), seq_lens_host=list(lengths))
        positions = [p for n in lengths for p in range(n)]
        slots = [f * bs + p for f, n in zip(firsts, lengths) for p in range(n)]
        ctx = ForwardContext(positions=torch.tensor(positions, dtype=torch.int64, device=dev),
                             slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev), attn=attn,
                             cos_sin_cache=self.cos_sin_cache)
        return self.model(input_ids, ctx, self.kv_caches)

    def close(self) -> None:
        """Stop the page warmer; release what lives outside this process (the tensor-parallel runner stops its
        ranks)."""
        if self.page_warmer is not None:
            self.page_warmer.stop()

    def _prepare(self, scheduled: list[tuple[Sequence, int]], every_row: bool = False):
        """The step's flat inputs. Unless `every_row` (prompt tokens to score) or LoRA rows, the last layer computes
        only the rows that sample (`ctx.last_rows`): the model then returns just the `logits_indices` rows."""
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens: list[int] = []
        seq_lens: list[int] = []
        logits_indices: list[int] = []
        kept: list[int] = []
        sampling: list[Sequence] = []
        bs = self.block_size
        for seq, num_new in scheduled:
            start, end = seq.num_computed_tokens, seq.num_computed_tokens + num_new
            tokens.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            for first in range(start - start % bs, end, bs):  # one range per block, not one item per token
                base = table[first // bs] * bs - first
                slots.extend(range(base + max(start, first), base + min(end, first + bs)))
            query_lens.append(num_new)
            seq_lens.append(end)
            kept.append(0)
            if end == seq.num_tokens:
                # a sequence carrying draft tokens is verified at each of them, plus the token before the first
                kept[-1] = 1 + seq.num_draft_tokens
                logits_indices.extend(range(len(tokens) - kept[-1], len(tokens)))
                sampling.append(seq)
        max_blocks = max(len(seq.block_table) for seq, _ in scheduled)
        tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq, _ in scheduled]
        query_start_loc = [0]
        for n in query_lens:
            query_start_loc.append(query_start_loc[-1] + n)
        dev = self.device
        attn = AttentionMetadata(
            query_start_loc=torch.tensor(query_start_loc, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            num_decodes=count_decodes(query_lens),
            max_query_len=max(query_lens),
            max_seq_len=max(seq_lens),
            query_lens_host=query_lens,
            seq_lens_host=seq_lens,
        )
        lora = None if self.adapters is None else self.adapters.batch(scheduled)
        last_rows = None
        if not every_row and lora is None and 0 < len(logits_indices) < len(tokens):
            last_rows = LastLayerRows.of(attn, kept)
        ctx = ForwardContext(
            positions=torch.tensor(positions, dtype=torch.int64, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            attn=attn,
            cos_sin_cache=self.cos_sin_cache,
            lora=lora,
            last_rows=last_rows,
        )
        input_ids = torch.tensor(tokens, dtype=torch.int64, device=dev)
        return input_ids, ctx, torch.tensor(logits_indices, dtype=torch.int64, device=dev), sampling


def reads_argmax_only(seq: Sequence) -> bool:
    """Whether the engine reads nothing of this sequence's logits rows (its own and its drafts') but their argmax:
    the sampler's greedy rows, outside a beam search or a grammar."""
    return argmax_decides(seq) and seq.guide is None and not seq.params.use_beam_search


def _any_row(seq: Sequence) -> bool:
    return True


def _zeroed_cache(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero-filled KV cache; on the CPU a mapping of its own whose pages cost nothing until touched (torch.zeros
    would write every page first, ~8 s for 5 GiB here)."""
    return anonymous_zeros(shape, dtype) if device.type == "cpu" else torch.zeros(shape, dtype=dtype, device=device)


def _worth_warming(cache: torch.Tensor) -> bool:
    # A small cache (tests, an encoder's scratch) faults in within a step or two: not worth a thread.
    return cache.device.type == "cpu" and cache.numel() * cache.element_size() > 64 * 2**20
