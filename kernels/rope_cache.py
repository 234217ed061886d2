"""Precomputed cos/sin table shared by every rotary-embedding backend."""
from __future__ import annotations

import torch


def build_cos_sin_cache(
    inv_freq: torch.Tensor, max_positions: int, attention_scaling: float, dtype: torch.dtype
) -> torch.Tensor:
    """Returns [max_positions, D] rows cat(cos(p * inv_freq), sin(p * inv_freq)) * attention_scaling.

    Computed in fp32 like transformers' rotary embedding, then cast, so a model run with this table matches HF.
    `inv_freq` and `attention_scaling` come from transformers' rope init functions, which carry the rope scaling.
    """
    if inv_freq.dim() != 1:
        raise ValueError(f"inv_freq must be 1-D [head_dim / 2], got shape {tuple(inv_freq.shape)}")
    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions}")
    positions = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(positions, inv_freq.to(torch.float32))
    cache = torch.cat((freqs.cos() * attention_scaling, freqs.sin() * attention_scaling), dim=-1)
    return cache.to(dtype)
