"""Engine configuration: one dataclass, kept on the engine instance."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    """Knobs of one engine instance.

    The KV budget is reserved up front: `kv_cache_bytes` if given, else `kv_cache_fraction` of the memory that is
    free on the device when the engine starts.
    """

    model: str = "smollm2-135m"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    quantization: str = "none"  # none | int8 (decoder projections as int8 weights, per-output-channel scales)
    device: str = "auto"  # auto | cpu | cuda
    block_size: int = 16
    kv_cache_bytes: int | None = None
    kv_cache_fraction: float = 0.25
    max_num_batched_tokens: int = 1024
    max_num_seqs: int = 64
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    num_threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if not 0.0 < self.kv_cache_fraction <= 0.95:
            raise ValueError(f"kv_cache_fraction must be in (0, 0.95], got {self.kv_cache_fraction}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.quantization not in ("none", "int8"):
            raise ValueError(f"quantization must be none or int8, got {self.quantization!r}")
