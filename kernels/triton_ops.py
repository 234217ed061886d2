"""Triton backend: the six hot-path ops, with the same signatures as kernels.torch_ops."""
from tide.kernels.triton_attention import paged_attention
from tide.kernels.triton_elementwise import (
    fused_add_rms_norm,
    rms_norm,
    rotary_embedding,
    silu_and_mul,
    write_kv_cache,
)

