"""Hot-path ops of the engine, one backend per device, all with the same signatures:

- `triton`: Triton kernels on CUDA;
- `native`: a C++ library built on first use for the CPU's features (AVX-512 with or without BF16, or AVX2 + FMA),
  called through ctypes (`native.py`, `csrc/`); what it cannot serve goes to the twins;
- `torch`: PyTorch twins, the reference and the fallback anywhere.

    ops = get_ops(device)   # TIDE_KERNELS=triton|native|torch overrides the choice
    ops.write_kv_cache / paged_attention / fused_add_rms_norm / rms_norm / rotary_embedding / silu_and_mul / add_lora
    ops.rotary_write_kv_cache                             # rotary_embedding, then write_kv_cache, in one call
    ops.argmax                                            # greedy sampling

Triton is imported only when the Triton backend is chosen, so this package imports on machines without it.
"""
from tide.kernels.dispatch import KernelOps, get_ops
from tide.kernels.rope_cache import build_cos_sin_cache

__all__ = ["KernelOps", "build_cos_sin_cache", "get_ops"]
