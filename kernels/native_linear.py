"""The CPU path's fp32 linear on Tide's own kernel (kernels/csrc/linear.cpp): the weight is packed once into column
panels, and each call streams the panels from memory one ahead of the FMAs. It serves decode steps, where every
layer's weights come from DRAM, faster than oneDNN on the 2-core AVX-512 CPU, and prefill on a par
(docs/PERFORMANCE.md). Only measured on AVX-512, so `serves` keeps AVX2 builds on oneDNN.
"""
from __future__ import annotations

import torch

from tide.kernels.native import NativeLibrary


def serves(library: NativeLibrary | None, dtype: torch.dtype) -> bool:
    """Whether `library` runs linears of this dtype (fp32, on a 16-wide AVX-512 build)."""
    return library is not None and dtype == torch.float32 and library.vector_width == 16


def pack_weight(weight: torch.Tensor, library: NativeLibrary) -> torch.Tensor:
    """W [N, K] (fp32) as the kernel's panels [ceil(N / NR), K, NR], zero past N."""
    if weight.dtype != torch.float32 or weight.dim() != 2:
        raise ValueError(f"the native linear packs 2-D fp32 weights, got {weight.dtype} {tuple(weight.shape)}")
    weight = weight.contiguous()
    n, k = weight.shape
    width = library.lib.tide_linear_panel_width()
    packed = torch.empty(-(-n // width), k, width)
    library.lib.tide_pack_linear_weight(weight.data_ptr(), n, k, packed.data_ptr())
    return packed


def linear(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None,
           library: NativeLibrary, num_threads: int | None = None) -> torch.Tensor:
    """x [..., K] @ W.T + bias for W packed by `pack_weight`; fp32 in, fp32 out. `num_threads` defaults to torch's
    thread count."""
    in_features = packed.shape[1]
    if x.dtype != torch.float32 or x.shape[-1] != in_features or x.device.type != "cpu":
        raise ValueError(f"the native linear takes fp32 CPU rows of {in_features}, got {x.dtype} {tuple(x.shape)} "
                         f"on {x.device}")
    if bias is not None:
        if bias.dtype != torch.float32 or bias.shape != (out_features,):
            raise ValueError(f"the native linear takes an fp32 bias of {out_features}, got {bias.dtype} "
                             f"{tuple(bias.shape)}")
        bias = bias.contiguous()  # held here: the library reads it after this line
    rows = x.reshape(-1, in_features)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], out_features)
    if rows.shape[0]:
        library.lib.tide_linear(rows.data_ptr(), rows.stride(0), rows.shape[0], in_features, packed.data_ptr(),
                                None if bias is None else bias.data_ptr(), out_features, out.data_ptr(),
                                out.stride(0), num_threads or torch.get_num_threads())
    return out.reshape(*x.shape[:-1], out_features)
