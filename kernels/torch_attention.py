"""PyTorch twin of paged attention: the CPU fast path and the oracle for the Triton kernel.

Decodes are batched: their block tables are walked in chunks of blocks for all decode sequences at once, each chunk
gathered (small enough to stay in cache), scored and folded into an fp32 online-softmax state. Gathering every
sequence's whole context in one go would write and re-read the full KV working set through memory each layer.
Prefill chunks are few per step, so each goes through scaled_dot_product_attention with a causal-with-prefix mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tide.kernels.metadata import AttentionMetadata

# Bytes of K gathered per decode chunk (all sequences together): small enough for the gathered K and V to stay in
# cache, large enough to amortise per-op overhead. Chosen with `python -P -m tide.benchmarks.kernels_cpu`
# (docs/KERNELS.md).
DECODE_CHUNK_BYTES = 2 << 20


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """Attention of q [T, Hq, D] over the paged cache [num_blocks, block_size, Hkv, D]; returns [T, Hq, D].

    Decodes read whole blocks and zero the probabilities past each sequence's end, so the cache must hold finite
    values everywhere (allocate it with torch.zeros, not torch.empty).
    """
    out = torch.empty_like(q)
    # int64 indices: index_select with int32 ones is several times slower on CPU.
    block_tables = meta.block_tables.long()
    if meta.num_decodes:
        out[: meta.num_decodes] = decode_attention(
            q[: meta.num_decodes], k_cache, v_cache, block_tables[: meta.num_decodes],
            meta.seq_lens_host[: meta.num_decodes], scale,
        )
    row = meta.num_decodes
    for b in range(meta.num_decodes, meta.num_seqs):
        q_len = meta.query_lens_host[b]
        out[row : row + q_len] = prefill_attention(
            q[row : row + q_len], k_cache, v_cache, block_tables[b], meta.seq_lens_host[b], scale
        )
        row += q_len
    return out


def gather_context(cache: torch.Tensor, block_row: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first seq_len cache entries of one sequence as [seq_len, Hkv, D]."""
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    blocks = cache.index_select(0, block_row[:num_blocks])
    return blocks.flatten(0, 1)[:seq_len]


def prefill_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_row: torch.Tensor, seq_len: int,
    scale: float,
) -> torch.Tensor:
    """One sequence's chunk q [L, Hq, D] attending causally to its cached prefix plus itself."""
    q_len = q.shape[0]
    k = gather_context(k_cache, block_row, seq_len).transpose(0, 1)
    v = gather_context(v_cache, block_row, seq_len).transpose(0, 1)
    mask = None
    if q_len != seq_len:
        query_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        mask = torch.arange(seq_len, device=q.device)[None, :] <= query_pos[:, None]
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1), k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=True
    )
    return o.transpose(0, 1)


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: list[int], scale: float, chunk_bytes: int = DECODE_CHUNK_BYTES,
) -> torch.Tensor:
    """Single-token queries q [B, Hq, D] over their whole contexts, chunk by chunk with an online softmax.

    Each chunk is one batched matmul per product: scores of every q head against every kv head of the chunk
    ([Hq] x [N * Hkv]), of which the matching-head diagonal is kept. The extra Hkv-fold FLOPs are cheap next to
    the alternative of copying K/V into a head-major layout, since decode attention is bound by memory traffic.
    Products run in the cache dtype (bf16 on CPU is ~3x faster than fp32 there); softmax state is fp32.
    """
    num_seqs, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    # Longest first, so the sequences still active in a chunk are a prefix of the batch.
    order = sorted(range(num_seqs), key=lambda b: -seq_lens[b])
    perm = torch.tensor(order, device=q.device)
    lens = [seq_lens[b] for b in order]
    lens_t = torch.tensor(lens, device=q.device)
    tables = block_tables.index_select(0, perm).long()
    q_scaled = (q.index_select(0, perm).float() * scale).to(k_cache.dtype)
    k_flat, v_flat = k_cache.flatten(1), v_cache.flatten(1)
    m = torch.full((num_seqs, num_kv_heads, group), float("-inf"), device=q.device)
    denom = torch.zeros_like(m)
    acc = torch.zeros(num_seqs, num_q_heads, head_dim, device=q.device)
    max_blocks = -(-lens[0] // block_size)
    block_bytes = k_cache[0].numel() * k_cache.element_size()
    chunk_blocks = max(1, chunk_bytes // (num_seqs * block_bytes))
    for start in range(0, max_blocks, chunk_blocks):
        active = sum(1 for n in lens if n > start * block_size)
        width = min(chunk_blocks, max_blocks - start)
        n_keys = width * block_size
        blocks = tables[:active, start : start + width].reshape(-1)
        k = k_flat.index_select(0, blocks).view(active, n_keys * num_kv_heads, head_dim)
        v = v_flat.index_select(0, blocks).view(active, n_keys * num_kv_heads, head_dim)
        all_pairs = torch.bmm(q_scaled[:active], k.mT).view(active, num_kv_heads, group, n_keys, num_kv_heads)
        scores = all_pairs.diagonal(dim1=1, dim2=4).permute(0, 3, 1, 2).float().contiguous()  # [a, Hkv, G, N]
        pos = torch.arange(start * block_size, start * block_size + n_keys, device=q.device)
        scores.masked_fill_((pos[None, :] >= lens_t[:active, None])[:, None, None, :], float("-inf"))
        m_new = torch.maximum(m[:active], scores.amax(-1))
        alpha = torch.exp(m[:active] - m_new)
        p = torch.exp(scores - m_new[..., None])
        denom[:active] = denom[:active] * alpha + p.sum(-1)
        # Block-diagonal P so that one matmul multiplies each head's probabilities with its own kv head only.
        p_pairs = torch.zeros(active, num_kv_heads, group, n_keys, num_kv_heads, dtype=v.dtype, device=q.device)
        p_pairs.diagonal(dim1=1, dim2=4).copy_(p.permute(0, 2, 3, 1))
        pv = torch.bmm(p_pairs.view(active, num_q_heads, n_keys * num_kv_heads), v)
        acc[:active] = acc[:active] * alpha.view(active, num_q_heads, 1) + pv
        m[:active] = m_new
    out = (acc / denom.view(num_seqs, num_q_heads, 1)).to(q.dtype)
    return torch.empty_like(out).index_copy_(0, perm, out)
