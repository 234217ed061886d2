"""Paged attention straight from its definition, in float64: what every backend is checked against."""
from __future__ import annotations

import torch


def reference(batch) -> torch.Tensor:
    """float64 attention of every query row, sequence by sequence, straight from the definition (on the CPU)."""
    meta, block_size = batch.meta, batch.k_cache.shape[1]
    group = batch.q.shape[1] // batch.k_cache.shape[2]
    q_all, k_cache, v_cache, tables = batch.q.cpu(), batch.k_cache.cpu(), batch.v_cache.cpu(), meta.block_tables.cpu()
    out = torch.empty(batch.q.shape, dtype=torch.float64)
    start = 0
    for b in range(meta.num_seqs):
        seq_len, q_len = meta.seq_lens_host[b], meta.query_lens_host[b]
        slots = (tables[b].long()[:, None] * block_size + torch.arange(block_size)).flatten()[:seq_len]
        k = k_cache.flatten(0, 1)[slots].double().repeat_interleave(group, 1)
        v = v_cache.flatten(0, 1)[slots].double().repeat_interleave(group, 1)
        q = q_all[start : start + q_len].double()
        scores = torch.einsum("qhd,khd->hqk", q, k) * batch.scale
        q_pos = torch.arange(seq_len - q_len, seq_len)
        scores.masked_fill_(torch.arange(seq_len)[None, :] > q_pos[:, None], float("-inf"))
        out[start : start + q_len] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
        start += q_len
    return out
