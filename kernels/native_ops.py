"""The CPU backend: the native C++ library's paged attention, KV write, fused add + RMSNorm, rotary embedding,
SiLU-and-mul and argmax, with the same signatures and rounding as the PyTorch twins, and the LoRA updates of a step's
rows.

Each op checks that the library can serve its arguments (CPU tensors, fp32 or bf16, widths that are multiples of
the vector width, the layouts below) and hands anything else to its twin, so the backend never fails where the
twins would not.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from tide.kernels import native, torch_ops
from tide.kernels.metadata import AttentionMetadata, LoraRows
from tide.kernels.torch_ops import rms_norm

__all__ = ["add_lora", "argmax", "fused_add_rms_norm", "paged_attention", "rms_norm", "rotary_embedding",
           "rotary_write_kv_cache", "silu_and_mul", "write_kv_cache"]

_DTYPES = {torch.float32: 0, torch.bfloat16: 1}  # the library's dtype argument (native_linear uses it too)


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


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as kernels.torch_ops.fused_add_rms_norm, for x [T, hidden]."""
    library = native.load()
    tensors = (x, weight) if residual is None else (x, weight, residual)
    if not (_served(library, tensors, x.shape[-1]) and x.dim() == 2
            and (residual is None or residual.shape == x.shape)):
        return torch_ops.fused_add_rms_norm(x, residual, weight, eps)
    out = torch.empty_like(x)
    residual_out = x if residual is None else torch.empty_like(x)
    library.lib.tide_add_rms_norm(x.data_ptr(), None if residual is None else residual.data_ptr(), weight.data_ptr(),
                                  out.data_ptr(), residual_out.data_ptr(), x.shape[0], x.shape[1], float(eps),
                                  _DTYPES[x.dtype], torch.get_num_threads())
    return out, residual_out


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Same contract as kernels.torch_ops.silu_and_mul: silu(x[:, :I]) * x[:, I:] for x [T, 2I]."""
    library = native.load()
    inter = x.shape[-1] // 2
    if not (_served(library, (x,), inter) and x.dim() == 2):
        return torch_ops.silu_and_mul(x)
    out = torch.empty(x.shape[0], inter, dtype=x.dtype)
    library.lib.tide_silu_and_mul(x.data_ptr(), out.data_ptr(), x.shape[0], inter, _DTYPES[x.dtype],
                                  torch.get_num_threads())
    return out


def argmax(logits: torch.Tensor, library: native.NativeLibrary | None = None) -> torch.Tensor:
    """Same contract as kernels.torch_ops.argmax, for fp32 or bf16 rows with unit column stride."""
    library = library or native.load()
    if not (library is not None and logits.dim() == 2 and logits.dtype in _DTYPES and logits.device.type == "cpu"
            and logits.stride(1) == 1 and logits.shape[1] > 0):
        return torch_ops.argmax(logits)
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    library.lib.tide_argmax_rows(logits.data_ptr(), logits.stride(0), logits.shape[0], logits.shape[1],
                                 _DTYPES[logits.dtype], out.data_ptr(), torch.get_num_threads())
    return out


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> None:
    """Same contract as kernels.torch_ops.rotary_embedding; q and k may be views with a token stride."""
    library = native.load()
    head_dim = q.shape[-1]
    if not (is_neox and _served(library, (cos_sin_cache,), head_dim // 2) and cos_sin_cache.dtype == q.dtype
            and positions.dtype == torch.int64 and positions.is_contiguous()
            and all(_heads_served(x, q.dtype) for x in (q, k))):
        torch_ops.rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
        return
    for x in (q, k):
        library.lib.tide_rotary_neox(positions.data_ptr(), x.data_ptr(), x.stride(0), x.shape[0], x.shape[1],
                                     head_dim, cos_sin_cache.data_ptr(), _DTYPES[x.dtype], torch.get_num_threads())


def rotary_write_kv_cache(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos_sin_cache: torch.Tensor,
    is_neox: bool, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
) -> None:
    """Same contract as kernels.torch_ops.rotary_write_kv_cache, in one native call: each token's q and k rotated
    and its k and v rows copied to its slot in one pass (three calls before, two of them for the rotary)."""
    library = native.load()
    head_dim, row = q.shape[-1], k_cache.shape[2] * k_cache.shape[3]
    if not (is_neox and _served(library, (cos_sin_cache, k_cache, v_cache), head_dim // 2)
            and cos_sin_cache.dtype == q.dtype == k.dtype == v.dtype and positions.dtype == torch.int64
            and positions.is_contiguous() and slot_mapping.dtype == torch.int64 and slot_mapping.is_contiguous()
            and all(_heads_served(x, q.dtype) for x in (q, k, v)) and _rows_contiguous(v, row)
            and _rows_contiguous(k, row)):
        torch_ops.rotary_then_write_kv(rotary_embedding, write_kv_cache, positions, q, k, v, cos_sin_cache, is_neox,
                                       k_cache, v_cache, slot_mapping)
        return
    rc = library.lib.tide_rotary_write_kv(
        positions.data_ptr(), q.data_ptr(), q.stride(0), q.shape[1], k.data_ptr(), k.stride(0), v.data_ptr(),
        v.stride(0), k.shape[1], head_dim, cos_sin_cache.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
        slot_mapping.data_ptr(), q.shape[0], k_cache.shape[0] * k_cache.shape[1], _DTYPES[q.dtype],
        torch.get_num_threads())
    if rc != 0:  # a slot out of range, nothing touched: the twins rotate and then raise the usual error
        torch_ops.rotary_write_kv_cache(positions, q, k, v, cos_sin_cache, is_neox, k_cache, v_cache, slot_mapping)


def _served(library: native.NativeLibrary | None, tensors, width: int) -> bool:
    """CPU, one dtype the library knows, contiguous, and `width` a multiple of the vector width."""
    dtype = tensors[0].dtype
    if library is None or width % library.vector_width or dtype not in _DTYPES:
        return False
    for t in tensors:  # a plain loop: this runs for every element-wise op of every layer
        if t.dtype != dtype or not t.is_cpu or not t.is_contiguous():
            return False
    return True


def _heads_served(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """x [T, heads, D] with contiguous heads inside each token (a view into the qkv projection is fine)."""
    return (x.dim() == 3 and x.dtype == dtype and x.device.type == "cpu" and x.stride(2) == 1
            and x.stride(1) == x.shape[2])


def add_lora(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows: LoraRows,
             part_columns: tuple[int, ...], library: native.NativeLibrary | None = None,
             num_threads: int | None = None) -> None:
    """Same contract as kernels.torch_ops.add_lora; `part_columns` are the output columns where each part of the
    fused projection starts, then its width (q, k, v: (0, q, q + kv, q + 2 kv)). One native call for the projection,
    reading only b's diagonal blocks and keeping the low-rank product in fp32."""
    library = library or native.load()
    columns = None if library is None else _columns(part_columns, a.shape[2], library.vector_width)
    if not (columns is not None and x.dtype == y.dtype == a.dtype == b.dtype and x.dtype in _DTYPES
            and x.device.type == "cpu" and x.stride(1) == 1 and y.stride(1) == 1 and a.is_contiguous()
            and b.is_contiguous()):
        torch_ops.add_lora(x, y, a, b, rows, part_columns)
        return
    parts = len(part_columns) - 1
    library.lib.tide_lora_apply(x.data_ptr(), x.stride(0), y.data_ptr(), y.stride(0), a.data_ptr(), b.data_ptr(),
                                rows.order.data_ptr(), rows.segments.data_ptr(), len(rows.spans), x.shape[1],
                                a.shape[2] // parts, parts, columns.data_ptr(), _DTYPES[x.dtype],
                                num_threads or torch.get_num_threads())


@lru_cache(maxsize=None)
def _columns(part_columns: tuple[int, ...], rank_columns: int, vector_width: int) -> torch.Tensor | None:
    """A projection's part columns as the int32 tensor the library reads, made once per shape (a handful per
    model); None when the widths are not whole vectors (the twin serves those)."""
    widths = [end - start for start, end in zip(part_columns, part_columns[1:])]
    if rank_columns % vector_width or any(width % vector_width for width in widths):
        return None
    return torch.tensor(part_columns, dtype=torch.int32)
