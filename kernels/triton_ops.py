"""Triton backend: the hot-path ops, with the same signatures as kernels.torch_ops. LoRA updates run as the twin's
per-adapter matmuls, which cuBLAS serves well on a GPU, and the argmax is torch's; rotary + KV write are the two
kernels back to back."""
from functools import partial

from tide.kernels.torch_ops import add_lora, argmax, rotary_then_write_kv
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

rotary_write_kv_cache = partial(rotary_then_write_kv, rotary_embedding, write_kv_cache)
