"""PyTorch twins of the hot-path ops (CPU fast path, and the oracle for the Triton kernels)."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from tide.kernels.metadata import LoraRows
from tide.kernels.torch_attention import paged_attention


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Stores key/value [T, Hkv, D] at cache slots block_id * block_size + offset; slot -1 is skipped."""
    if bool((slot_mapping < 0).any()):  # rare (padding); the engine's own steps never skip a slot
        keep = slot_mapping >= 0
        slot_mapping, key, value = slot_mapping[keep], key[keep], value[keep]
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, normalised in fp32 and cast back before the weight (HF Llama numerics)."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual); the sum is taken in x.dtype."""
    residual_out = x if residual is None else x + residual
    return rms_norm(residual_out, weight, eps), residual_out


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> None:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] in place by their positions' rows of cos_sin_cache [max_pos, D]."""
    cos, sin = cos_sin_cache.index_select(0, positions).to(q.dtype)[:, None, :].chunk(2, dim=-1)
    for x in (q, k):
        if is_neox:
            x1, x2 = x.chunk(2, dim=-1)
        else:
            x1, x2 = x[..., 0::2], x[..., 1::2]
        r1 = x1 * cos - x2 * sin
        r2 = x2 * cos + x1 * sin
        x1.copy_(r1)
        x2.copy_(r2)


def rotary_then_write_kv(
    rotary: Callable[..., None], write: Callable[..., None], positions: torch.Tensor, q: torch.Tensor,
    k: torch.Tensor, v: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool, k_cache: torch.Tensor,
    v_cache: torch.Tensor, slot_mapping: torch.Tensor,
) -> None:
    """The glue between the qkv projection and attention, `rotary_write_kv_cache`, from a backend's own two ops:
    rotary(q, k) in place, then write(k, v) to their slots. The native backend does both in one call."""
    rotary(positions, q, k, cos_sin_cache, is_neox)
    write(k, v, k_cache, v_cache, slot_mapping)


rotary_write_kv_cache = partial(rotary_then_write_kv, rotary_embedding, write_kv_cache)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[:, :I]) * x[:, I:] for x [T, 2I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def argmax(logits: torch.Tensor) -> torch.Tensor:
    """Index of each row's largest value ([rows] int64) of logits [rows, vocab]; the first of equal ones."""
    return logits.argmax(dim=-1)


def add_lora(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows: LoraRows,
             part_columns: tuple[int, ...]) -> None:
    """y[i] += (x[i] @ a[slot]) @ b[slot] in place for each row i of each slot in `rows`.

    x [T, in], y [T, out]; a [slots, in, parts * block] and b [slots, parts * block, out], block-diagonal by part
    (engine/lora/adapter.py): part p's rows of b write only output columns part_columns[p]..part_columns[p + 1].
    The twin multiplies the whole of b (its zero blocks add nothing); the native op reads only the diagonal blocks.
    """
    for slot, start, end in rows.spans:
        index = rows.order[start:end].long()
        delta = (x.index_select(0, index) @ a[slot]) @ b[slot]
        y.index_copy_(0, index, y.index_select(0, index) + delta)
