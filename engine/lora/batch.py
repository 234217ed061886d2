"""Resident adapters' weights in slots, and one step's LoRA updates applied to the rows that use them.

`LoraSlots` holds, per layer and fused projection, every resident adapter's (a, b) stacked by slot: a
[slots, in, parts * block], b [slots, parts * block, out] (the layout of `engine/lora/adapter.py`). A step's rows are
grouped into runs of one adapter; the base projection runs once over all rows, then each run gets `(x @ a) @ b`
added to its rows only (segment-wise, as Punica's SGMV and S-LoRA do):

- short runs (decodes: a few rows per adapter) go through two batched matmuls over the slots, their rows gathered
  into a [slots, longest run, in] block, so eight adapters cost what one does in calls;
- long runs (prefill chunks) get two matmuls each, on their rows in place.

Rows of no adapter are in no run and get nothing added; a projection no resident adapter targets is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tide.engine.lora.adapter import LoraAdapter, fused_shapes
from tide.engine.models.llama import ModelArgs
from tide.engine.sequence import Sequence

# Runs of at least this many rows are applied on their own; shorter ones are batched over the slots. Batching pads
# every slot to the longest short run, so the threshold bounds the padding while covering decode steps.
LONG_RUN_ROWS = 32


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


@dataclass
class _Gathered:
    """The short runs laid out for batched matmuls over the slots `first`..`first + count - 1`."""

    first: int
    count: int
    rows: torch.Tensor  # [count * longest] row of x for each place; padding points at row 0
    mask: torch.Tensor  # [count, longest, 1]: 1 for real rows, 0 for padding
    places: torch.Tensor  # [num_rows] each row's place, or a padding place (zero update) for rows in no short run


class LoraBatch:
    """The LoRA part of a step's `ForwardContext`: which rows use which slot, and how to update them."""

    def __init__(self, slots: LoraSlots, keys: dict[nn.Module, tuple[int, str]], runs: list[tuple[int, int, int]],
                 num_rows: int) -> None:
        self.slots, self.keys = slots, keys
        self.long = [run for run in runs if run[2] - run[1] >= LONG_RUN_ROWS]
        short = [run for run in runs if run[2] - run[1] < LONG_RUN_ROWS]
        self.short = _gather(short, num_rows, slots.device, slots.dtype) if short else None
        self.used = {slot for slot, _, _ in runs}

    def apply(self, linear: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Add each run's adapter update to `y = linear(x)` in place; x: [T, in], y: [T, out]."""
        layer, name = self.keys[linear]
        if not self.used & self.slots.targeted[layer].get(name, set()):
            return y
        a, b = self.slots.a[layer][name], self.slots.b[layer][name]
        for slot, start, end in self.long:
            y[start:end].addmm_(x[start:end] @ a[slot], b[slot])
        g = self.short
        if g is not None:
            xs = x.index_select(0, g.rows).view(g.count, -1, x.shape[1])  # [slots, longest, in]
            shrunk = torch.bmm(xs, a.narrow(0, g.first, g.count)) * g.mask
            delta = torch.bmm(shrunk, b.narrow(0, g.first, g.count))  # [slots, longest, out]
            # Back to row order by a gather, not a scatter: index_add_ is ~100x slower in bf16 on CPU.
            y.add_(delta.view(-1, y.shape[1]).index_select(0, g.places))
        return y


def _gather(runs: list[tuple[int, int, int]], num_rows: int, device: torch.device, dtype: torch.dtype
            ) -> _Gathered:
    """Rows of each slot's short runs, side by side, every slot of the span padded to one more than the longest (so
    the last place is always padding)."""
    first = min(slot for slot, _, _ in runs)
    count = max(slot for slot, _, _ in runs) - first + 1
    rows: list[list[int]] = [[] for _ in range(count)]
    for slot, start, end in runs:
        rows[slot - first].extend(range(start, end))
    longest = max(len(r) for r in rows) + 1
    flat = [i for r in rows for i in r + [0] * (longest - len(r))]
    mask = [[1.0] * len(r) + [0.0] * (longest - len(r)) for r in rows]
    places = [count * longest - 1] * num_rows
    for place, row in enumerate(flat):
        if mask[place // longest][place % longest]:
            places[row] = place
    return _Gathered(first, count, torch.tensor(flat, dtype=torch.int64, device=device),
                     torch.tensor(mask, dtype=dtype, device=device).unsqueeze(-1),
                     torch.tensor(places, dtype=torch.int64, device=device))


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
