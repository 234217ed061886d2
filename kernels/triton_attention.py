"""Triton paged attention for a mixed batch: a prefill-chunk kernel, a decode kernel with optional split-K
(flash-decoding) and the log-sum-exp reduction that merges the splits.

Scores use exp2 with log2(e) folded into the scale, so every max / log-sum-exp below is in base 2.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tide.kernels.metadata import AttentionMetadata

LOG2E = 1.4426950408889634
# Split a decode only when each split still walks this many blocks: shorter splits cost more in the reduction
# than they win in parallelism.
MIN_BLOCKS_PER_SPLIT = 16
MAX_SPLITS = 16
# A decode program reads several cache blocks per loop iteration (each key's block looked up on its own), so more
# loads are in flight than one 16-key block gives. Measured on an H200 (bf16, head_dim 64; docs/KERNELS.md): 128 keys
# x 4 warps ran a 64 x 2048-key decode batch 3.2x faster than one 16-key block per iteration. The tile holds this
# many keys x head dims, so it halves at head_dim 128 to keep K and V in registers.
DECODE_TILE_ELEMENTS = 128 * 64
DECODE_NUM_WARPS = 4
# The prefill kernel's keys per loop iteration (several cache blocks, as in decode). Measured on an H200 (bf16,
# head_dim 64, 4 prompts of 512 tokens on 512 cached): 64 keys x 4 warps 1.8x faster than one 16-key block; 128 keys
# and 8 warps were slower.
PREFILL_TILE_KEYS = 64
PREFILL_NUM_WARPS = 4


@triton.jit
def _online_softmax_step(q, k, v, valid, m_i, l_i, acc, scale_log2, DOT_PRECISION: tl.constexpr):
    """Folds one KV tile into the running (max, denominator, accumulator) of each query row."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # Rows with nothing valid yet keep m = -inf; pin the shift to 0 so they give exp2(-inf) = 0, not NaN.
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - shift)
    p = tl.exp2(s - shift[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["num_decodes"])
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_tables_ptr, query_start_loc_ptr, seq_lens_ptr,
    scale_log2, num_decodes,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program: BLOCK_M query rows of one prefill chunk, one q head, over the prefix and the chunk (causal)."""
    seq = num_decodes + tl.program_id(0)
    tile = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    if tile * BLOCK_M < q_len:
        seq_len = tl.load(seq_lens_ptr + seq)
        offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        offs_n = tl.arange(0, BLOCK_N)
        row_ok = offs_m < q_len
        d_ok = offs_d < HEAD_DIM
        q = tl.load(q_ptr + (q_start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        q_pos = seq_len - q_len + offs_m
        kv_end = tl.minimum(seq_len, seq_len - q_len + (tile + 1) * BLOCK_M)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, kv_end, BLOCK_N):
            k, v, key_ok = _load_kv_keys(k_cache_ptr, v_cache_ptr, block_tables_ptr, seq, stride_bt, start + offs_n,
                                         kv_end, kv_head, stride_cb, stride_cs, stride_ch, offs_d, d_ok, BLOCK_SIZE)
            valid = ((start + offs_n)[None, :] <= q_pos[:, None]) & key_ok[None, :]
            m_i, l_i, acc = _online_softmax_step(q, k, v, valid, m_i, l_i, acc, scale_log2, DOT_PRECISION)
        out = acc / l_i[:, None]
        tl.store(out_ptr + (q_start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _load_kv_keys(k_cache_ptr, v_cache_ptr, block_tables_ptr, seq, stride_bt, pos, end, kv_head,
                  stride_cb, stride_cs, stride_ch, offs_d, d_ok, BLOCK_SIZE: tl.constexpr):
    """K and V at positions `pos` of `seq` (any number of cache blocks), zero at positions >= end."""
    key_ok = pos < end
    block = tl.load(block_tables_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
    row = block * stride_cb + (pos % BLOCK_SIZE) * stride_cs + kv_head * stride_ch
    kv_mask = key_ok[:, None] & d_ok[None, :]
    k = tl.load(k_cache_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + row[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    return k, v, key_ok


@triton.jit(do_not_specialize=["blocks_per_split", "num_splits"])
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, part_out_ptr, part_lse_ptr, block_tables_ptr, seq_lens_ptr,
    scale_log2, blocks_per_split, num_q_heads, num_splits,
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One program: all q heads sharing one kv head of one decode, over one split of its blocks."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kv_head * GROUP + offs_g
    g_ok = offs_g < GROUP
    d_ok = offs_d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    first = split * blocks_per_split * BLOCK_SIZE
    last = tl.minimum(seq_len, first + blocks_per_split * BLOCK_SIZE)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(first, last, BLOCK_N):
        # A tile may run past this split's last block: `last` masks it, not only seq_len.
        k, v, key_ok = _load_kv_keys(k_cache_ptr, v_cache_ptr, block_tables_ptr, seq, stride_bt, start + offs_n, last,
                                     kv_head, stride_cb, stride_cs, stride_ch, offs_d, d_ok, BLOCK_SIZE)
        m_i, l_i, acc = _online_softmax_step(q, k, v, key_ok[None, :], m_i, l_i, acc, scale_log2, DOT_PRECISION)
    store_mask = g_ok[:, None] & d_ok[None, :]
    if not SPLIT:
        tl.store(out_ptr + seq * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        # An empty split (past the end of a short sequence) leaves lse = -inf, so the reduction weighs it 0.
        has_keys = l_i > 0
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        part_out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
        row = (seq * num_q_heads + heads) * num_splits + split
        tl.store(part_lse_ptr + row, lse, mask=g_ok)
        tl.store(part_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], part_out, mask=store_mask)


@triton.jit(do_not_specialize=["num_splits"])
def _reduce_splits_kernel(
    part_out_ptr, part_lse_ptr, out_ptr, num_q_heads, num_splits, stride_ot, stride_oh,
    BLOCK_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Merges one (decode, q head)'s split results, weighting each by exp2(its lse - the max lse)."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_p = tl.arange(0, BLOCK_SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    row = (seq * num_q_heads + head) * num_splits + offs_p
    p_ok = offs_p < num_splits
    lse = tl.load(part_lse_ptr + row, mask=p_ok, other=float("-inf"))
    weight = tl.exp2(lse - tl.max(lse, 0))
    parts = tl.load(part_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=p_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    out = tl.sum(weight[:, None] * parts, 0) / tl.sum(weight, 0)
    tl.store(out_ptr + seq * stride_ot + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 caches ask for fp32 results: without this, GPUs would run the dots in TF32.
    return "ieee" if dtype == torch.float32 else "tf32"


def choose_num_splits(num_decodes: int, num_kv_heads: int, max_blocks: int, device: torch.device) -> int:
    """Splits per decode so that a small batch of long decodes still fills the GPU; 1 off CUDA."""
    if device.type != "cuda":
        return 1
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = num_decodes * num_kv_heads
    if programs >= num_sms or max_blocks < 2 * MIN_BLOCKS_PER_SPLIT:
        return 1
    return min(triton.cdiv(2 * num_sms, programs), max_blocks // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS)


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, max_seq_len: int, scale: float, num_splits: int, tile_keys: int | None = None,
    num_warps: int = DECODE_NUM_WARPS,
) -> None:
    """Writes out[:B] for the B single-token queries q [B, Hq, D], splitting each context into num_splits parts and
    reading `tile_keys` keys (a power of two; default from DECODE_TILE_ELEMENTS) per loop iteration, at least one
    cache block."""
    num_decodes, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    blocks_per_split = triton.cdiv(triton.cdiv(max_seq_len, block_size), num_splits)
    part_out = part_lse = out  # unused placeholders when there is a single split
    if num_splits > 1:
        part_out = torch.empty(num_decodes, num_q_heads, num_splits, head_dim, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(num_decodes, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(head_dim)
    if tile_keys is None:
        tile_keys = max(16, DECODE_TILE_ELEMENTS // block_d)
    _decode_kernel[(num_decodes, num_kv_heads, num_splits)](
        q, k_cache, v_cache, out, part_out, part_lse, block_tables, seq_lens,
        scale * LOG2E, blocks_per_split, num_q_heads, num_splits,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, BLOCK_N=max(tile_keys, block_size), SPLIT=num_splits > 1,
        DOT_PRECISION=_dot_precision(k_cache.dtype), num_warps=num_warps,
    )
    if num_splits > 1:
        # One compiled reduction for every split count up to MAX_SPLITS.
        _reduce_splits_kernel[(num_decodes, num_q_heads)](
            part_out, part_lse, out, num_q_heads, num_splits, out.stride(0), out.stride(1),
            BLOCK_SPLITS=triton.next_power_of_2(MAX_SPLITS), HEAD_DIM=head_dim, BLOCK_D=block_d,
        )


def prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor, meta: AttentionMetadata,
    scale: float, tile_keys: int = PREFILL_TILE_KEYS, num_warps: int = PREFILL_NUM_WARPS,
) -> None:
    """Writes the prefill rows of out (all rows of sequences num_decodes.. in meta), reading `tile_keys` keys (a
    power of two, at least one cache block) per loop iteration."""
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    max_chunk = max(meta.query_lens_host[meta.num_decodes :])
    block_m = 16 if max_chunk <= 16 else 32 if max_chunk <= 32 else 64
    grid = (meta.num_seqs - meta.num_decodes, triton.cdiv(max_chunk, block_m), num_q_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, meta.block_tables, meta.query_start_loc, meta.seq_lens,
        scale * LOG2E, meta.num_decodes,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        GROUP=num_q_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_M=block_m, BLOCK_SIZE=block_size, BLOCK_N=max(tile_keys, block_size),
        DOT_PRECISION=_dot_precision(k_cache.dtype), num_warps=num_warps,
    )


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Attention of q [T, Hq, D] over the paged cache [num_blocks, block_size, Hkv, D]; returns [T, Hq, D]."""
    _check_layout(q, k_cache, v_cache)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    nd = meta.num_decodes
    if nd:
        max_decode_len = max(meta.seq_lens_host[:nd])
        splits = choose_num_splits(nd, k_cache.shape[2], triton.cdiv(max_decode_len, k_cache.shape[1]), q.device)
        decode_attention(q[:nd], k_cache, v_cache, out, meta.block_tables, meta.seq_lens, max_decode_len, scale,
                         splits)
    if meta.num_seqs > nd:
        prefill_attention(q, k_cache, v_cache, out, meta, scale)
    return out


def _check_layout(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if q.stride(-1) != 1:
        raise ValueError("paged_attention needs q with a contiguous last dimension")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()) or k_cache.shape != v_cache.shape:
        raise ValueError("paged_attention needs contiguous k_cache and v_cache of the same shape")
    if k_cache.shape[1] < 16:
        raise ValueError(f"the Triton paged attention needs block_size >= 16 (tl.dot tiles), got {k_cache.shape[1]}")
    if q.shape[1] % k_cache.shape[2]:
        raise ValueError(f"{q.shape[1]} query heads are not a multiple of {k_cache.shape[2]} kv heads")
