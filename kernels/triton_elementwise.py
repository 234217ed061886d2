"""Triton kernels for the per-token ops: KV-cache write, RMSNorm (with fused residual add), rotary embedding and
SiLU-and-mul. Each rounds where its PyTorch twin rounds, so fp16/bf16 results match the twins (and HF)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cb, stride_cs, stride_ch,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    slot = tl.load(slot_ptr + token)
    if slot >= 0:
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < HEAD_DIM
        dst = (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_cs + head * stride_ch + offs_d
        k = tl.load(key_ptr + token * stride_kt + head * stride_kh + offs_d, mask=d_ok)
        v = tl.load(value_ptr + token * stride_vt + head * stride_vh + offs_d, mask=d_ok)
        tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=d_ok)
        tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=d_ok)


def write_kv_cache(
    key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Stores key/value [T, Hkv, D] at cache slots block_id * block_size + offset; slot -1 is skipped."""
    if key.stride(-1) != 1 or value.stride(-1) != 1 or not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("write_kv_cache needs key/value with a contiguous last dim and contiguous caches")
    num_tokens, num_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    _write_kv_kernel[(num_tokens, num_heads)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
    )


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr, eps,
    stride_x, stride_r, stride_o, stride_ro,
    HIDDEN: tl.constexpr, BLOCK_H: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_H)
    ok = offs < HIDDEN
    x = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        # The sum is rounded to the activation dtype before it is normalised, as the unfused model does.
        x = x + tl.load(residual_ptr + row * stride_r + offs, mask=ok, other=0.0)
        tl.store(residual_out_ptr + row * stride_ro + offs, x, mask=ok)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / HIDDEN + eps)
    normed = (xf * rstd).to(x.dtype)
    w = tl.load(weight_ptr + offs, mask=ok, other=0.0)
    tl.store(out_ptr + row * stride_o + offs, (normed * w).to(out_ptr.dtype.element_ty), mask=ok)


def _launch_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = x.shape[-1]
    rows = x.reshape(-1, hidden)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    res = rows if residual is None else residual.reshape(-1, hidden).contiguous()
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty(rows.shape, dtype=out_dtype, device=x.device)
    res_out = torch.empty_like(rows) if residual is not None else rows
    if rows.shape[0]:
        _rms_norm_kernel[(rows.shape[0],)](
            rows, res, weight, out, res_out, eps,
            rows.stride(0), res.stride(0), out.stride(0), res_out.stride(0),
            HIDDEN=hidden, BLOCK_H=triton.next_power_of_2(hidden), HAS_RESIDUAL=residual is not None,
        )
    return out.view(x.shape), res_out.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, normalised in fp32 and cast back before the weight (HF Llama numerics)."""
    return _launch_rms_norm(x, None, weight, eps)[0]


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual); the sum is taken in x.dtype."""
    out, residual_out = _launch_rms_norm(x, residual, weight, eps)
    return out, (x if residual is None else residual_out)


@triton.jit
def _rotary_kernel(
    positions_ptr, x_ptr, cos_sin_ptr, stride_xt, stride_xh, stride_cs, num_heads,
    HALF: tl.constexpr, BLOCK_HEADS: tl.constexpr, BLOCK_HALF: tl.constexpr, IS_NEOX: tl.constexpr,
):
    token = tl.program_id(0)
    pos = tl.load(positions_ptr + token)
    offs_i = tl.arange(0, BLOCK_HALF)
    offs_h = tl.arange(0, BLOCK_HEADS)
    i_ok = offs_i < HALF
    mask = (offs_h < num_heads)[:, None] & i_ok[None, :]
    cos = tl.load(cos_sin_ptr + pos * stride_cs + offs_i, mask=i_ok, other=0.0)[None, :]
    sin = tl.load(cos_sin_ptr + pos * stride_cs + HALF + offs_i, mask=i_ok, other=0.0)[None, :]
    base = x_ptr + token * stride_xt + offs_h[:, None] * stride_xh
    if IS_NEOX:
        first = base + offs_i[None, :]
        second = first + HALF
    else:
        first = base + 2 * offs_i[None, :]
        second = first + 1
    x1 = tl.load(first, mask=mask, other=0.0)
    x2 = tl.load(second, mask=mask, other=0.0)
    cos = cos.to(x1.dtype)
    sin = sin.to(x1.dtype)
    tl.store(first, x1 * cos - x2 * sin, mask=mask)
    tl.store(second, x2 * cos + x1 * sin, mask=mask)


def rotary_embedding(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor, is_neox: bool
) -> None:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] in place by their positions' rows of cos_sin_cache [max_pos, D]."""
    half = q.shape[-1] // 2
    for x in (q, k):
        if x.stride(-1) != 1:
            raise ValueError("rotary_embedding needs q and k with a contiguous last dimension")
        if x.shape[0]:
            _rotary_kernel[(x.shape[0],)](
                positions, x, cos_sin_cache, x.stride(0), x.stride(1), cos_sin_cache.stride(0), x.shape[1],
                HALF=half, BLOCK_HEADS=triton.next_power_of_2(x.shape[1]),
                BLOCK_HALF=triton.next_power_of_2(half), IS_NEOX=is_neox,
            )


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, INTER: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < INTER
    gate = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0)
    up = tl.load(x_ptr + row * stride_x + INTER + offs, mask=ok, other=0.0)
    gf = gate.to(tl.float32)
    silu = (gf / (1.0 + tl.exp(-gf))).to(gate.dtype)
    tl.store(out_ptr + row * stride_o + offs, silu * up, mask=ok)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[:, :I]) * x[:, I:] for x [T, 2I]."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    inter = x.shape[-1] // 2
    out = torch.empty(x.shape[0], inter, dtype=x.dtype, device=x.device)
    block = min(1024, triton.next_power_of_2(inter))
    if x.shape[0]:
        _silu_and_mul_kernel[(x.shape[0], triton.cdiv(inter, block))](
            x, out, x.stride(0), out.stride(0), INTER=inter, BLOCK=block
        )
    return out
