"""One step's LoRA updates: the step's token rows grouped into runs by adapter, and the batched low-rank apply.

The base projections run once over all rows; each adapter then adds `(x @ a) @ b` to its own rows only, one run at
a time (segment-wise, as Punica's SGMV and S-LoRA do). The scheduler puts the rows of one adapter next to each
other (decodes first, then prefill chunks), so an adapter has at most two runs per step and each costs two matmuls
per projection, whatever the number of rows. Rows of no adapter are in no run and get nothing added.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tide.engine.lora.adapter import LoraAdapter
from tide.engine.sequence import Sequence

Run = tuple[LoraAdapter, int, int]  # (adapter, first row, row after the last)


def projection_keys(model: nn.Module) -> dict[nn.Module, tuple[int, str]]:
    """Each adaptable projection module of a Llama-family model -> (layer index, projection name)."""
    keys: dict[nn.Module, tuple[int, str]] = {}
    for index, layer in enumerate(model.layers):
        for owner, names in ((layer.self_attn, ("qkv_proj", "o_proj")), (layer.mlp, ("gate_up_proj", "down_proj"))):
            for name in names:
                keys[getattr(owner, name)] = (index, name)
    return keys


@dataclass
class LoraBatch:
    """The LoRA part of a step's `ForwardContext`: which rows use which adapter, and how to update them."""

    runs: list[Run]
    keys: dict[nn.Module, tuple[int, str]]

    def apply(self, linear: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Add each run's adapter update to `y = linear(x)` in place; x: [T, in], y: [T, out]."""
        layer, name = self.keys[linear]
        for adapter, start, end in self.runs:
            pair = adapter.pairs[layer].get(name)
            if pair is not None:
                a, b = pair
                y[start:end].addmm_(x[start:end] @ a, b)
        return y


def row_runs(scheduled: list[tuple[Sequence, int]], adapter_of: Callable[[Sequence], LoraAdapter | None]
             ) -> list[Run]:
    """Runs of consecutive rows that share an adapter, in the order the step lays its rows out."""
    runs: list[Run] = []
    row = 0
    for seq, num_new in scheduled:
        adapter = adapter_of(seq)
        if adapter is not None:
            if runs and runs[-1][0] is adapter and runs[-1][2] == row:
                runs[-1] = (adapter, runs[-1][1], row + num_new)
            else:
                runs.append((adapter, row, row + num_new))
        row += num_new
    return runs
