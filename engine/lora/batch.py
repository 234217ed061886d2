"""Resident adapters' weights in slots, and one step's LoRA updates applied to the rows that use them.

`LoraSlots` holds, per layer and fused projection, every resident adapter's (a, b) stacked by slot: a
[slots, in, parts * block], b [slots, parts * block, out] (the layout of `engine/lora/adapter.py`). A step's rows
are grouped by slot (`LoraRows`); the base projection runs once over all rows, then the kernels' `add_lora` adds
each row's `(x @ a) @ b` for its own slot, in one call per projection (segment-wise, as Punica's SGMV and S-LoRA
do). Rows of no adapter get nothing added; a projection no adapter of the step targets is skipped.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tide.engine.lora.adapter import LoraAdapter, fused_shapes
from tide.engine.models.llama import ModelArgs
from tide.engine.sequence import Sequence
from tide.kernels.metadata import LoraRows

# The kernels' add_lora op (kernels/torch_ops.py): x, y, a, b, rows, part columns.
AddLora = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, LoraRows, tuple[int, ...]], None]


def projection_keys(model: nn.Module) -> dict[nn.Module, tuple[int, str]]:
    """Each adaptable projection module of a Llama-family model -> (layer index, projection name)."""
    keys: dict[nn.Module, tuple[int, str]] = {}
    for index, layer in enumerate(model.layers):
        for owner, names in ((layer.self_attn, ("qkv_proj", "o_proj")), (layer.mlp, ("gate_up_proj", "down_proj"))):
            for name in names:
                keys[getattr(owner, name)] = (index, name)
    return keys


class LoraSlots:
    """`num_slots` adapters' weights, stacked per layer and projection; allocated on the first install."""

    def __init__(self, args: ModelArgs, num_slots: int, block: int, dtype: torch.dtype, device: torch.device) -> None:
        self.args, self.num_slots, self.block, self.dtype, self.device = args, num_slots, block, dtype, device
        self.a: list[dict[str, torch.Tensor]] = []
        self.b: list[dict[str, torch.Tensor]] = []
        self.targeted: list[dict[str, set[int]]] = [{} for _ in range(args.num_layers)]  # slots with a pair
        # Where each part's output columns start in a fused projection, then its width (q, k, v / gate, up).
        self.columns = {name: tuple(start for start, _ in slices) + (slices[-1][0] + slices[-1][1],)
                        for name, (_, slices) in fused_shapes(args).items()}

    def install(self, slot: int, adapter: LoraAdapter) -> None:
        """Copy an adapter into `slot`, zeroing what it does not target (the slot's previous adapter may have)."""
        if not self.a:
            self._allocate()
        for layer, pairs in enumerate(adapter.pairs):
            for name in self.a[layer]:
                pair = pairs.get(name)
                users = self.targeted[layer].setdefault(name, set())
                if pair is None:
                    self.a[layer][name][slot].zero_()
                    self.b[layer][name][slot].zero_()
                    users.discard(slot)
                else:
                    self.a[layer][name][slot].copy_(pair[0])
                    self.b[layer][name][slot].copy_(pair[1])
                    users.add(slot)

    def _allocate(self) -> None:
        for _ in range(self.args.num_layers):
            a, b = {}, {}
            for name, (in_features, slices) in fused_shapes(self.args).items():
                width = len(slices) * self.block
                a[name] = torch.zeros(self.num_slots, in_features, width, dtype=self.dtype, device=self.device)
                b[name] = torch.zeros(self.num_slots, width, slices[-1][0] + slices[-1][1], dtype=self.dtype,
                                      device=self.device)
            self.a.append(a)
            self.b.append(b)


class LoraBatch:
    """The LoRA part of a step's `ForwardContext`: which rows use which slot, and how to update them."""

    def __init__(self, slots: LoraSlots, keys: dict[nn.Module, tuple[int, str]], runs: list[tuple[int, int, int]],
                 add_lora: AddLora) -> None:
        self.slots, self.keys, self.add_lora = slots, keys, add_lora
        self.rows = LoraRows.from_slots(runs, slots.device)
        self.used = {slot for slot, _, _ in runs}

    def apply(self, linear: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Add each row's adapter update to `y = linear(x)` in place; x: [T, in], y: [T, out]."""
        layer, name = self.keys[linear]
        if not self.used.isdisjoint(self.slots.targeted[layer].get(name, ())):
            self.add_lora(x, y, self.slots.a[layer][name], self.slots.b[layer][name], self.rows,
                          self.slots.columns[name])
        return y


def row_runs(scheduled: list[tuple[Sequence, int]], slot_of: dict[str, int]) -> list[tuple[int, int, int]]:
    """(slot, first row, row after the last) for each run of consecutive rows under one adapter, in row order."""
    runs: list[tuple[int, int, int]] = []
    row = 0
    for seq, num_new in scheduled:
        slot = slot_of.get(seq.params.lora) if seq.params.lora else None
        if slot is not None:
            if runs and runs[-1][0] == slot and runs[-1][2] == row:
                runs[-1] = (slot, runs[-1][1], row + num_new)
            else:
                runs.append((slot, row, row + num_new))
        row += num_new
    return runs
