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
    """`y = x @ W.T + b` on a oneDNN-packed copy of W (inference only)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def can_pack(dtype: torch.dtype) -> bool:
    """oneDNN packs fp32 anywhere, bf16 only on CPUs with bf16 support (AVX-512 BW/VL/DQ or AVX-NE-CONVERT):
    elsewhere the reorder raises, and bf16 stays on plain `F.linear`."""
    if not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def pack_linears(model: nn.Module) -> int:
    """Replace every nn.Linear in `model` with a PackedLinear; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, PackedLinear(child))
                replaced += 1
    return replaced
