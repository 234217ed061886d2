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
    (inference only). With `screened`, `argmax_logits` finds each row's argmax through a bf16 copy of W
    (kernels.native_linear.ArgmaxScreen): for a vocabulary head under greedy decoding."""

    gated = False

    def __init__(self, linear: nn.Linear, library: NativeLibrary, screened: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.library = library
        weight = linear.weight.detach()
        self.weight = native_linear.pack_weight(weight, library, self.gated)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.screen = native_linear.ArgmaxScreen.build(weight, library) if screened else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return native_linear.linear(x, self.weight, self.out_features, self.bias, self.library, gated=self.gated)

    def argmax_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scores whose row-wise argmax is that of `forward(x)`, exact only where an entry could be its row's
        largest (kernels.native_linear.argmax_logits); `forward(x)` itself without a screen."""
        if self.screen is not None and self.bias is None and x.dtype == torch.float32:
            scores = native_linear.argmax_logits(x, self.weight, self.screen, self.library)
            if scores is not None:
                return scores.reshape(*x.shape[:-1], self.out_features)
        return self.forward(x)


class GatedNativeLinear(NativeLinear):
    """A SiLU MLP's fused gate/up projection on the native kernel, packed so that each panel holds matching gate and
    up outputs: `silu_and_mul(x)` gives silu(gate) * up straight from the tiles, the bits `forward` then the
    separate op would give, without writing the [rows, 2I] product out."""

    gated = True

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        return native_linear.silu_and_mul(x, self.weight, self.out_features, self.bias, self.library)


def can_pack(dtype: torch.dtype) -> bool:
    return torch.backends.mkldnn.is_available() and dtype in (torch.float32, torch.bfloat16)


def pack_linears(model: nn.Module, library: NativeLibrary | None = None, head: nn.Module | None = None) -> int:
    """Replace every nn.Linear in `model` with a packed one: a NativeLinear where `library` (the native CPU kernels)
    serves the weight's dtype, else a PackedLinear; returns how many were replaced. The encoders pass no library:
    their GELU and residual adds ride on oneDNN's post-ops (engine/encoder/fused.py). A module's projection named by
    its `gated_projection` (a SiLU MLP's fused gate/up) becomes a GatedNativeLinear where its halves fit the panels;
    `head`, the model's vocabulary head, gets an argmax screen where the library has one for its weight
    (kernels.native_linear.screens)."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                native = native_linear.serves(library, child.weight.dtype, child.in_features)
                if native and name == getattr(parent, "gated_projection", None) \
                        and native_linear.gates(library, child.weight):
                    setattr(parent, name, GatedNativeLinear(child, library))
                elif native:
                    screened = child is head and native_linear.screens(library, child.weight)
                    setattr(parent, name, NativeLinear(child, library, screened))
                else:
                    setattr(parent, name, PackedLinear(child))
                replaced += 1
    return replaced
