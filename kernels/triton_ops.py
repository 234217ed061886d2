"""Triton backend: the hot-path ops, with the same signatures as kernels.torch_ops. LoRA updates run as the twin's
per-adapter matmuls, which cuBLAS serves well on a GPU, and the argmax is torch's."""
from tide.kernels.torch_ops import add_lora, argmax
from tide.kernels.triton_attention import paged_attention
from tide.kernels.triton_elementwise import (
    fused_add_rms_norm,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
    write_kv_cache,
)

__all__ = ["add_lora", "argmax", "fused_add_rms_norm", "paged_attention", "rms_norm", "rotary_embedding", "silu_and_mul",
           "write_kv_cache"]
