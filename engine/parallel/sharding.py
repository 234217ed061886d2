"""What one tensor-parallel rank holds of a Llama-family model, Megatron style.

qkv_proj and gate_up_proj are column-parallel (each rank computes its own heads and its own MLP columns, no
communication); o_proj and down_proj are row-parallel (each rank multiplies its slice of the input features, and an
all-reduce sums the partial results). The KV cache follows the heads: each rank caches only its KV heads. Embeddings,
norms and lm_head are replicated, so rank 0 computes full logits alone.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from tide.engine.models.llama import LlamaForCausalLM, ModelArgs

# HF checkpoint module names, by how their weight is split across ranks.
_COLUMN_PARALLEL = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}  # output features (rows of W)
_ROW_PARALLEL = {"o_proj", "down_proj"}  # input features (columns of W)


def check_divisible(args: ModelArgs, world_size: int) -> None:
    """Raise ValueError unless `world_size` ranks can each take an equal share of heads and MLP width."""
    counts = {"query heads": args.num_heads, "KV heads": args.num_kv_heads, "MLP width": args.intermediate_size}
    bad = [f"{n} {name}" for name, n in counts.items() if n % world_size]
    if bad:
        common = math.gcd(args.num_heads, args.num_kv_heads, args.intermediate_size)
        sizes = [d for d in range(2, common + 1) if common % d == 0][:6]
        raise ValueError(
            f"tensor_parallel_size={world_size} does not divide the model's {' and '.join(bad)} (it has "
            f"{args.num_heads} query heads, {args.num_kv_heads} KV heads, MLP width {args.intermediate_size}); "
            f"KV heads are not replicated, so use a size that divides all three"
            + (f": one of {sizes}" if sizes else " (this model has none above 1)"))


@dataclass(frozen=True)
class TensorShard:
    """Rank `rank` of `world_size`: reshapes the model, slices checkpoint tensors, adds the all-reduces."""

    rank: int
    world_size: int

    def shard_args(self, args: ModelArgs) -> ModelArgs:
        """The shape this rank builds: its share of query heads, KV heads and MLP width."""
        check_divisible(args, self.world_size)
        w = self.world_size
        return dataclasses.replace(args, num_heads=args.num_heads // w, num_kv_heads=args.num_kv_heads // w,
                                   intermediate_size=args.intermediate_size // w)

    def shard_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """This rank's slice of every HF-named checkpoint tensor (views; the loader copies them in)."""
        for name, tensor in weights:
            yield name, self._slice(name, tensor)

    def _slice(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        parts = name.split(".")
        module, kind = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
        if module in _COLUMN_PARALLEL:
            return tensor.chunk(self.world_size, 0)[self.rank]
        if module in _ROW_PARALLEL:
            if kind == "bias":  # added once to the sum over ranks, so only rank 0 keeps it
                return tensor if self.rank == 0 else torch.zeros_like(tensor)
            return tensor.chunk(self.world_size, 1)[self.rank]
        return tensor

    @staticmethod
    def wrap_row_parallel(model: LlamaForCausalLM) -> None:
        """Follow every o_proj and down_proj with the all-reduce that sums the ranks' partial outputs."""
        for layer in model.layers:
            layer.self_attn.o_proj = RowParallelLinear(layer.self_attn.o_proj)
            layer.mlp.down_proj = RowParallelLinear(layer.mlp.down_proj)


class RowParallelLinear(nn.Module):
    """A linear over this rank's slice of the input features; the all-reduce adds the other ranks' slices."""

    def __init__(self, linear: nn.Module) -> None:
        super().__init__()
        self.linear = linear  # a plain child, so the CPU path's pack_linears packs it like any other

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        dist.all_reduce(y)
        return y
