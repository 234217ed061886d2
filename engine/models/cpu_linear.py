"""Linear layers for the CPU path: oneDNN matmuls on weights packed once at load.

Measured on the 2-core AVX-512 CPU (docs/PERFORMANCE.md): fp32 `F.linear` goes through MKL at ~100-160 GFLOP/s
for this model's shapes, while oneDNN with a pre-packed weight reaches ~260-360; bf16 also gains. Packing happens
once, after the weights are loaded, so the hot path pays no reorder.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger("tide.engine")

# Token count the packed layout is tuned for; any batch size works, this one is typical of a decode-heavy step.
BATCH_HINT = 128


class PackedLinear(nn.Module):
    """`y = x @ W.T + b` on a oneDNN-packed copy of W (inference only).

    bf16 on a CPU without oneDNN bf16 support (no AVX-512 BW/VL/DQ or AVX-NE-CONVERT; the reorder raises there) runs
    on an fp32 copy of the bf16 weight, with the activations widened and the result rounded back to bf16: the same
    products and fp32 accumulation as a bf16 matmul, ~2x faster than `F.linear` in bf16 on an AVX2 CPU, for twice
    the weight memory.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
        self.out_dtype = weight.dtype
        if weight.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            weight, bias = weight.float(), None if bias is None else bias.float()
        self.compute_dtype = weight.dtype
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, BATCH_HINT)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype == self.out_dtype:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        y = torch.ops.mkldnn._linear_pointwise(x.to(self.compute_dtype), self.weight, self.bias, "none", [], "")
        return y.to(self.out_dtype)


def can_pack(dtype: torch.dtype) -> bool:
    return torch.backends.mkldnn.is_available() and dtype in (torch.float32, torch.bfloat16)


def pack_linears(model: nn.Module) -> int:
    """Replace every nn.Linear in `model` with a PackedLinear; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear(child))
                replaced += 1
    return replaced
