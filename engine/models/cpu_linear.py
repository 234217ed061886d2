"""Linear layers for the CPU path, on weights packed once at load: for the decoder on an AVX-512 CPU Tide's own
kernel (kernels/native_linear.py: fp32, and bf16 where the CPU has AVX512_BF16), oneDNN matmuls otherwise.

Measured on the 2-core AVX-512 CPU (docs/PERFORMANCE.md): fp32 `F.linear` goes through MKL at ~100-160 GFLOP/s
for this model's shapes, while oneDNN with a pre-packed weight reaches ~260-360; bf16 also gains. In a decode step
the weights stream from DRAM, where oneDNN's matmuls lose a fifth to a third of their in-cache rate and the native
kernel, which fetches its next panel ahead, keeps most of it. Packing happens once, after the weights are loaded,
so the hot path pays no reorder.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from tide.kernels import native_linear
from tide.kernels.native import NativeLibrary

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


class NativeLinear(nn.Module):
    """`y = x @ W.T + b` on Tide's own kernel (fp32, or bf16 on AVX512_BF16), W packed once into its column panels
    (inference only)."""

    def __init__(self, linear: nn.Linear, library: NativeLibrary) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.library = library
        self.weight = native_linear.pack_weight(linear.weight.detach(), library)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return native_linear.linear(x, self.weight, self.out_features, self.bias, self.library)


def can_pack(dtype: torch.dtype) -> bool:
    return torch.backends.mkldnn.is_available() and dtype in (torch.float32, torch.bfloat16)


def pack_linears(model: nn.Module, library: NativeLibrary | None = None) -> int:
    """Replace every nn.Linear in `model` with a packed one: a NativeLinear where `library` (the native CPU kernels)
    serves the weight's dtype, else a PackedLinear; returns how many were replaced. The encoders pass no library:
    their GELU and residual adds ride on oneDNN's post-ops (engine/encoder/fused.py)."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                native = native_linear.serves(library, child.weight.dtype, child.in_features)
                setattr(parent, name, NativeLinear(child, library) if native else PackedLinear(child))
                replaced += 1
    return replaced
