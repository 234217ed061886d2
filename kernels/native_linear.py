"""The CPU path's linears on Tide's own kernel (kernels/csrc/linear.cpp): the weight is packed once into column
panels, and each call streams the panels from memory one ahead of the FMAs (fp32) or `vdpbf16ps` dot products
(bf16). It serves decode steps, where every layer's weights come from DRAM, faster than oneDNN on the 2-core AVX-512
CPU, and prefill on a par (docs/PERFORMANCE.md). Only measured on AVX-512, so `serves` keeps AVX2 builds on oneDNN.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from tide.kernels import native
from tide.kernels.native import NativeLibrary
from tide.kernels.native_ops import _DTYPES


def serves(library: NativeLibrary | None, dtype: torch.dtype, in_features: int) -> bool:
    """Whether `library` runs linears of this dtype and width: fp32 on a 16-wide AVX-512 build; bf16 where it has
    the vdpbf16ps tiles (AVX512_BF16) and the CPU no AMX, for an even width (k goes in pairs)."""
    if library is None or library.vector_width != 16:
        return False
    if dtype == torch.bfloat16:
        return library.bf16_dot_products and in_features % 2 == 0 and bf16_pays(_cpu_flags())
    return dtype == torch.float32


def bf16_pays(cpu_flags: set[str] | frozenset[str]) -> bool:
    """Whether the vdpbf16ps tiles beat oneDNN's bf16 matmuls on a CPU with these flags: not where it has AMX, whose
    tiles run oneDNN's bf16 linears at 1.1-2.7 TFLOP/s on 2 cores (issue 19's Xeon), past vdpbf16ps's peak."""
    return "amx_bf16" not in cpu_flags


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    return frozenset(native.cpu_flags())


def pack_weight(weight: torch.Tensor, library: NativeLibrary) -> torch.Tensor:
    """W [N, K] as the kernel's panels: [ceil(N / NR), K, NR] elements, zero past N (bf16 holds each panel's k's in
    pairs within that shape)."""
    if weight.dtype not in _DTYPES or weight.dim() != 2:
        raise ValueError(f"the native linear packs 2-D fp32 or bf16 weights, got {weight.dtype} {tuple(weight.shape)}")
    weight = weight.contiguous()
    n, k = weight.shape
    width = library.lib.tide_linear_panel_width()
    packed = torch.empty(-(-n // width), k, width, dtype=weight.dtype)
    library.lib.tide_pack_linear_weight(weight.data_ptr(), n, k, packed.data_ptr(), _DTYPES[weight.dtype],
                                         torch.get_num_threads())
    return packed


def linear(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None,
           library: NativeLibrary, num_threads: int | None = None) -> torch.Tensor:
    """x [..., K] @ W.T + bias for W packed by `pack_weight`, in W's dtype (bf16: fp32 sums, rounded once).
    `num_threads` defaults to torch's thread count."""
    in_features, dtype = packed.shape[1], packed.dtype
    if x.dtype != dtype or x.shape[-1] != in_features or x.device.type != "cpu":
        raise ValueError(f"the native linear takes {dtype} CPU rows of {in_features}, got {x.dtype} "
                         f"{tuple(x.shape)} on {x.device}")
    if bias is not None:
        if bias.dtype != dtype or bias.shape != (out_features,):
            raise ValueError(f"the native linear takes a {dtype} bias of {out_features}, got {bias.dtype} "
                             f"{tuple(bias.shape)}")
        bias = bias.contiguous()  # held here: the library reads it after this line
    rows = x.reshape(-1, in_features)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape[0], out_features, dtype=dtype)
    if rows.shape[0]:
        rc = library.lib.tide_linear(rows.data_ptr(), rows.stride(0), rows.shape[0], in_features, packed.data_ptr(),
                                     None if bias is None else bias.data_ptr(), out_features, out.data_ptr(),
                                     out.stride(0), _DTYPES[dtype], num_threads or torch.get_num_threads())
        if rc != 0:
            raise ValueError(f"this build of the native library does not run {dtype} linears of width {in_features} "
                             f"({library.isa})")
    return out.reshape(*x.shape[:-1], out_features)
