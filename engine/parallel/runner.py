"""Rank 0's model runner: the ordinary one, announcing each step to the other ranks before running its shard."""
from __future__ import annotations

from collections.abc import Callable

import torch

from tide.engine.model_runner import ModelRunner
from tide.engine.parallel.group import TensorParallelGroup
from tide.engine.sequence import Sequence


class TensorParallelRunner(ModelRunner):
    """A ModelRunner over rank 0's shard; the other ranks run the same step on theirs in lockstep."""

    def __init__(self, group: TensorParallelGroup, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    # Forked beams copy KV blocks, and only rank 0 would copy its share: beam search is refused per request.
    copies_blocks = False

    def forward(self, scheduled: list[tuple[Sequence, int]], hidden_rows: list[int],
                argmax_only: Callable[[Sequence], bool] | None = None
                ) -> tuple[torch.Tensor, list[Sequence], torch.Tensor]:
        try:
            return super().forward(scheduled, hidden_rows, argmax_only)
        except (RuntimeError, BrokenPipeError, OSError) as exc:
            raise self.group.failure(exc) from exc

    def _prepare(self, scheduled: list[tuple[Sequence, int]], every_row: bool = False):
        prepared = super()._prepare(scheduled, every_row)
        input_ids, ctx = prepared[0], prepared[1]
        self.group.announce_step(input_ids, ctx)
        return prepared

    def close(self) -> None:
        self.group.close()
