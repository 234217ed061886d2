"""Triton backend: the hot-path ops, with the same signatures as kernels.torch_ops. LoRA updates run as the twin's
per-adapter matmuls, which cuBLAS serves well on a GPU, and the argmax is torch's."""
import torch

from tide.kernels.torch_ops import add_lora, argmax
from tide.kernels.triton_attention import paged_attention
from tide.kernels.triton_elementwise import (
    fused_add_rms_norm,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
    write_kv_cache,
)

__all__ = ["add_lora", "argmax", "fused_add_rms_norm", "paged_attention", "rms_norm", "rotary_embedding",
           "rotary_write_kv_cache", "silu_and_mul", "write_kv_cache"]


def rotary_write_kv_cache(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos_sin_cache: torch.Tensor,
    is_neox: bool, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
) -> None:
    """Same contract as kernels.torch_ops.rotary_write_kv_cache: two launches, which a GPU queues back to back."""
    rotary_embedding(positions, q, k, cos_sin_cache, is_neox)
    write_kv_cache(k, v, k_cache, v_cache, slot_mapping)
