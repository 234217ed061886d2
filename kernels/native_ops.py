"""The CPU backend: the native C++ paged attention and KV write, the PyTorch twins for the element-wise ops.

Each op checks that the library can serve its arguments (CPU tensors, fp32 or bf16, head_dim a multiple of the
vector width, the layouts below) and hands anything else to its twin, so the backend never fails where the twins
would not.
"""
from __future__ import annotations

import torch

from kernels import native, torch_ops
from kernels.metadata import AttentionMetadata
from kernels.torch_ops import fused_add_rms_norm, rms_norm, rotary_embedding, silu_and_mul

__all__ = ["fused_add_rms_norm", "paged_attention", "rms_norm", "rotary_embedding", "silu_and_mul",
           "write_kv_cache"]

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def native_serves(q: torch.Tensor, k_cache: torch.Tensor, library: native.NativeLibrary | None) -> bool:
    """Whether the library can run attention for these tensors (else the twin does)."""
    return (library is not None and q.device.type == "cpu" and q.dtype in _DTYPES and k_cache.dtype == q.dtype
            and q.shape[-1] % library.vector_width == 0 and q.stride(-1) == 1 and q.stride(-2) == q.shape[-1]
            and k_cache.is_contiguous())


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float,
    library: native.NativeLibrary | None = None, num_threads: int | None = None,
) -> torch.Tensor:
    """Same contract as kernels.torch_attention.paged_attention; q [T, Hq, D] may be a view with a row stride.

    `num_threads` defaults to torch's thread count.
    """
    library = library or native.load()
    if not native_serves(q, k_cache, library) or not v_cache.is_contiguous():
        return torch_ops.paged_attention(q, k_cache, v_cache, meta, scale)
    num_tokens, num_q_heads, head_dim = q.shape
    out = torch.empty(num_tokens, num_q_heads, head_dim, dtype=q.dtype)
    qsl, seq_lens, tables = (_int32(t) for t in (meta.query_start_loc, meta.seq_lens, meta.block_tables))
    rc = library.lib.tide_paged_attention(
        q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(), qsl.data_ptr(),
        seq_lens.data_ptr(), tables.data_ptr(), tables.stride(0), meta.num_seqs, num_q_heads, k_cache.shape[2],
        head_dim, k_cache.shape[1], float(scale), _DTYPES[q.dtype], num_threads or torch.get_num_threads(),
    )
    if rc != 0:
        return torch_ops.paged_attention(q, k_cache, v_cache, meta, scale)
    return out


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Same contract as kernels.torch_ops.write_kv_cache: key/value [T, Hkv, D] to their slots, -1 skipped."""
    library = native.load()
    row = k_cache.shape[2] * k_cache.shape[3]
    if (library is None or key.dtype != k_cache.dtype or value.dtype != v_cache.dtype or key.device.type != "cpu"
            or not (k_cache.is_contiguous() and v_cache.is_contiguous()) or slot_mapping.dtype != torch.int64
            or not slot_mapping.is_contiguous() or not _rows_contiguous(key, row) or not _rows_contiguous(value, row)):
        torch_ops.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)
        return
    rc = library.lib.tide_write_kv_cache(
        key.data_ptr(), key.stride(0), value.data_ptr(), value.stride(0), k_cache.data_ptr(), v_cache.data_ptr(),
        slot_mapping.data_ptr(), key.shape[0], k_cache.shape[0] * k_cache.shape[1], row, key.element_size(),
    )
    if rc != 0:  # a slot out of range: the twin raises the usual error
        torch_ops.write_kv_cache(key, value, k_cache, v_cache, slot_mapping)


def _rows_contiguous(x: torch.Tensor, row_elems: int) -> bool:
    """x [T, H, D] with each token's H * D elements contiguous (a row of a wider matrix is fine)."""
    return x.dim() == 3 and x.stride(2) == 1 and x.stride(1) == x.shape[2] and x.shape[1] * x.shape[2] == row_elems


def _int32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int32 and t.is_contiguous() else t.to(torch.int32).contiguous()
