"""The CPU path's linears on Tide's own kernel (kernels/csrc/linear.cpp): the weight is packed once into column
panels, and each call streams the panels from memory one ahead of the FMAs (fp32) or `vdpbf16ps` dot products
(bf16). It serves decode steps, where every layer's weights come from DRAM, faster than oneDNN on the 2-core AVX-512
CPU, and prefill on a par (docs/PERFORMANCE.md). Only measured on AVX-512, so `serves` keeps AVX2 builds on oneDNN.
"""
from __future__ import annotations

from dataclasses import dataclass
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


# Panel layouts of kernels/csrc/linear.cpp: GATED packs a SiLU MLP's fused gate/up weight [2I, K] so that each panel
# holds W gate rows and the W up rows that pair with them; GATED_SILU is the call that returns silu(gate) * up.
PLAIN, GATED, GATED_SILU = 0, 1, 2


def pack_weight(weight: torch.Tensor, library: NativeLibrary, gated: bool = False) -> torch.Tensor:
    """W [N, K] as the kernel's panels: [ceil(N / NR), K, NR] elements, zero past N (bf16 holds each panel's k's in
    pairs within that shape). `gated`: W is [gate; up] of a SiLU MLP (N = 2I, I a multiple of the vector width),
    packed so that `silu_and_mul` can combine each panel's halves."""
    if weight.dtype not in _DTYPES or weight.dim() != 2:
        raise ValueError(f"the native linear packs 2-D fp32 or bf16 weights, got {weight.dtype} {tuple(weight.shape)}")
    weight = weight.contiguous()
    n, k = weight.shape
    width = library.lib.tide_linear_panel_width()
    packed = torch.empty(-(-n // width), k, width, dtype=weight.dtype)
    rc = library.lib.tide_pack_linear_weight(weight.data_ptr(), n, k, packed.data_ptr(), _DTYPES[weight.dtype],
                                             GATED if gated else PLAIN, torch.get_num_threads())
    if rc != 0:
        raise ValueError(f"a gated weight needs an even number of rows, each half a multiple of {width // 2}; got {n}")
    return packed


def gates(library: NativeLibrary | None, weight: torch.Tensor) -> bool:
    """Whether a fused gate/up weight can be packed gated (its halves in whole vectors)."""
    return library is not None and weight.shape[0] % library.lib.tide_linear_panel_width() == 0


def linear(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None,
           library: NativeLibrary, num_threads: int | None = None, out_dtype: torch.dtype | None = None,
           gated: bool = False) -> torch.Tensor:
    """x [..., K] @ W.T + bias for W packed by `pack_weight` (`gated` as packed), in W's dtype (bf16: fp32 sums,
    rounded once), or in fp32 (`out_dtype`) for a bf16 product left unrounded. `num_threads` defaults to torch's
    thread count."""
    return _call(x, packed, out_features, bias, library, num_threads, out_dtype, GATED if gated else PLAIN)


def silu_and_mul(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None,
                 library: NativeLibrary, num_threads: int | None = None) -> torch.Tensor:
    """silu(gate) * up of the gated product (`pack_weight(..., gated=True)`), [..., out_features / 2]: the same bits
    as `native_ops.silu_and_mul` of `linear(..., gated=True)`, without writing the product out."""
    return _call(x, packed, out_features, bias, library, num_threads, None, GATED_SILU)


def _call(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None,
          library: NativeLibrary, num_threads: int | None, out_dtype: torch.dtype | None, layout: int) -> torch.Tensor:
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
    out_dtype = out_dtype or dtype
    if out_dtype not in (dtype, torch.float32):
        raise ValueError(f"the native linear gives {dtype} or float32 outputs, not {out_dtype}")
    width = out_features // 2 if layout == GATED_SILU else out_features
    out = torch.empty(rows.shape[0], width, dtype=out_dtype)
    if rows.shape[0]:
        rc = library.lib.tide_linear(rows.data_ptr(), rows.stride(0), rows.shape[0], in_features, packed.data_ptr(),
                                     None if bias is None else bias.data_ptr(), out_features, out.data_ptr(),
                                     out.stride(0), _DTYPES[dtype], _DTYPES[out_dtype], layout,
                                     num_threads or torch.get_num_threads())
        if rc != 0:
            raise ValueError(f"this build of the native library does not run {dtype} linears of width {in_features} "
                             f"into {out_dtype} ({library.isa})")
    return out.reshape(*x.shape[:-1], width)


@dataclass(frozen=True)
class ArgmaxScreen:
    """A bf16 copy of an fp32 weight W [N, K] that finds each row's argmax of x @ W.T at bf16 cost, exactly.

    The bf16 product (vdpbf16ps, fp32 sums) is within `c * |x|_2 * |w_j|_2` of the fp32 one for every output j: x
    and w_j each rounded to bf16 (relative error 2^-8) move a product by at most (2u + u^2) |x_k w_k|; the bf16 sums
    and the fp32 chain each round at most K times (gamma_K of the sum of |x_k w_k|, with bf16's (1 + u)^2 on its
    side); the sum of |x_k w_k| is at most |x|_2 |w_j|_2 (Cauchy-Schwarz). Entries whose range could hold the row's
    maximum are recomputed exactly (tide_linear_refine_max); typically a handful of a vocabulary's.
    """

    packed_bf16: torch.Tensor
    wnorm: torch.Tensor  # [N] float32, |w_j|_2 rounded up
    wnorm_max: float
    c: float

    @classmethod
    def build(cls, weight: torch.Tensor, library: NativeLibrary) -> ArgmaxScreen:
        k = weight.shape[1]
        u, unit32 = 2.0**-8, 2.0**-24
        gamma = k * unit32 / (1 - k * unit32)
        c = (2 * u + u * u + gamma * ((1 + u) ** 2 + 1)) * (1 + 2.0**-10)  # margin for the bound's own rounding
        # an fp32 norm is within K fp32 roundings of the exact one: widened by twice that, then rounded up
        norm = torch.linalg.vector_norm(weight, dim=1) * (1 + 2 * k * unit32)
        wnorm = torch.nextafter(norm, torch.tensor(float("inf")))
        return cls(pack_weight(weight.to(torch.bfloat16), library), wnorm, float(wnorm.max()), c)


def screens(library: NativeLibrary | None, weight: torch.Tensor) -> bool:
    """Whether an `ArgmaxScreen` pays for this weight: fp32, on a build with vdpbf16ps tiles, even K."""
    return (library is not None and library.bf16_dot_products and weight.dtype == torch.float32
            and weight.dim() == 2 and weight.shape[1] % 2 == 0 and serves(library, torch.float32, weight.shape[1]))


def argmax_logits(x: torch.Tensor, packed: torch.Tensor, screen: ArgmaxScreen, library: NativeLibrary,
                  num_threads: int | None = None) -> torch.Tensor | None:
    """Scores [M, N] of fp32 rows x [M, K] whose row-wise argmax (first among equals) is that of x @ W.T for the
    fp32 W packed in `packed`: exact fp32 values wherever an entry could be its row's largest, the bf16 estimate
    (below the row's maximum) elsewhere. None when a row or an estimate is not finite: compute the full product."""
    rows = x.reshape(-1, packed.shape[1])
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    threads = num_threads or torch.get_num_threads()
    scores = linear(rows.to(torch.bfloat16), screen.packed_bf16, screen.wnorm.shape[0], None, library, threads,
                    out_dtype=torch.float32)
    replaced = library.lib.tide_linear_refine_max(
        rows.data_ptr(), rows.stride(0), rows.shape[0], rows.shape[1], packed.data_ptr(), scores.shape[1],
        screen.wnorm.data_ptr(), screen.wnorm_max, screen.c, scores.data_ptr(), scores.stride(0), threads)
    return None if replaced < 0 else scores
