"""Draft-model proposals: a second, smaller model with the same tokenizer runs k greedy steps ahead of the target.

The draft keeps its own paged KV cache. Its copy of a sequence is synced with the target's tokens before each
proposal: the KV of the longest common prefix is kept, the rest (drafts the target rejected) is recomputed.
"""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import torch

from tide.engine.block_manager import BlockManager
from tide.engine.config import EngineConfig
from tide.engine.loader import load_config, resolve_model
from tide.engine.model_runner import ModelRunner
from tide.engine.models.llama import ModelArgs
from tide.engine.sequence import Sequence, SequenceStatus
from tide.engine.startup import EngineParts, build_engine_parts


class _DraftSeq:
    """The draft model's copy of one target sequence, in the shape ModelRunner and BlockManager read."""

    def __init__(self, target: Sequence) -> None:
        self.target = target
        self.token_ids = list(target.token_ids)
        self.num_computed_tokens = 0
        self.num_draft_tokens = 0  # the draft model itself verifies nothing
        self.block_table: list[int] = []
        self.synced = 0  # token_ids[:synced] equal the target's tokens as of the last proposal

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    def sync(self) -> None:
        """Take the target's current tokens, keeping the KV of the prefix both still share."""
        mine, theirs = self.token_ids, self.target.token_ids
        common, limit = self.synced, min(len(mine), len(theirs))
        while common < limit and mine[common] == theirs[common]:
            common += 1
        del mine[common:]
        mine.extend(theirs[common:])
        self.num_computed_tokens = min(self.num_computed_tokens, common, len(mine) - 1)
        self.synced = len(mine)


class DraftProposer:
    """Proposes each sequence's next tokens as the draft model's greedy continuation, all sequences batched."""

    def __init__(self, runner: ModelRunner, block_manager: BlockManager, max_model_len: int) -> None:
        self.runner = runner
        self.block_manager = block_manager
        self.max_model_len = max_model_len
        self._seqs: dict[int, _DraftSeq] = {}  # by target seq_id

    @classmethod
    def load(cls, config: EngineConfig, target: EngineParts, max_model_len: int) -> "DraftProposer":
        """Load `config.draft_model` beside the target, with KV room for every token the target can hold."""
        draft_dir = resolve_model(config.draft_model)
        dtype = target.runner.kv_cache.dtype
        num_blocks = target.block_manager.num_blocks + config.max_num_seqs * -(
            -config.num_speculative_tokens // config.block_size)
        draft_config = replace(config, model=str(draft_dir), dtype=str(dtype).removeprefix("torch."),
                               device=target.runner.device.type, max_model_len=max_model_len,
                               kv_cache_bytes=num_blocks * config.block_size * _kv_bytes_per_token(draft_dir, dtype),
                               enable_prefix_caching=False, speculative="off", draft_model=None)
        parts = build_engine_parts(draft_config)
        if parts.tokenizer.get_vocab() != target.tokenizer.get_vocab():
            raise ValueError(f"draft model {config.draft_model!r} does not share the tokenizer of {config.model!r}; "
                             "a draft model must use the same vocabulary")
        return cls(parts.runner, parts.block_manager, parts.max_model_len)

    def propose(self, seqs: list[Sequence], limits: list[int]) -> list[list[int]]:
        """At most `limits[i]` greedy draft tokens after `seqs[i]`; none where the draft's cache or context is full."""
        self._release_gone()
        pending: list[tuple[_DraftSeq, int]] = []
        for seq, k in zip(seqs, limits):
            draft = self._seqs.get(seq.seq_id)
            if draft is None:
                draft = self._seqs[seq.seq_id] = _DraftSeq(seq)
            draft.sync()
            k = min(k, self.max_model_len - draft.num_tokens)
            needed = draft.num_uncomputed_tokens + k - 1  # the last proposal is never computed
            if k >= 1 and self.block_manager.can_allocate(draft, needed):
                self.block_manager.allocate(draft, needed)
                pending.append((draft, k))
        while pending:
            self._step([draft for draft, _ in pending])
            pending = [(draft, k) for draft, k in pending if draft.num_tokens - draft.synced < k]
        return [self._proposal(seq) for seq in seqs]

    def _step(self, drafts: list[_DraftSeq]) -> None:
        scheduled = sorted(((d, d.num_uncomputed_tokens) for d in drafts), key=lambda item: item[1] != 1)
        logits, rows = self.runner.run(scheduled)  # type: ignore[arg-type]  # _DraftSeq reads as a Sequence
        for draft, num_new in scheduled:
            draft.num_computed_tokens += num_new
        for draft, token in zip(rows, self.runner.model.ops.argmax(logits).tolist()):
            draft.token_ids.append(token)

    def _proposal(self, seq: Sequence) -> list[int]:
        draft = self._seqs.get(seq.seq_id)
        return [] if draft is None else draft.token_ids[draft.synced:]

    def _release_gone(self) -> None:
        """Free the draft copies of sequences that finished or were preempted (those start over)."""
        for seq_id, draft in list(self._seqs.items()):
            if draft.target.status is not SequenceStatus.RUNNING:
                self.block_manager.free(draft)  # type: ignore[arg-type]
                del self._seqs[seq_id]


def _kv_bytes_per_token(model_dir, dtype: torch.dtype) -> int:
    """KV cache bytes per token of the model in `model_dir`, read from its config before loading it."""
    hf_config = load_config(model_dir)
    args = ModelArgs.from_hf_config(hf_config, hf_config.architectures[0])
    return ModelRunner.kv_bytes_per_token(SimpleNamespace(args=args), dtype)
