"""Hot-path ops of the engine: Triton kernels on GPU and PyTorch twins with the same signatures on CPU.

    ops = kernels.get_ops(device)
    ops.write_kv_cache / paged_attention / fused_add_rms_norm / rms_norm / rotary_embedding / silu_and_mul

Triton is imported only when the Triton backend is chosen, so this package imports on machines without it.
"""
from tide.kernels.dispatch import KernelOps, get_ops
from tide.kernels.rope_cache import build_cos_sin_cache

__all__ = ["KernelOps", "build_cos_sin_cache", "get_ops"]
