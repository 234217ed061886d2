"""Engine configuration: one dataclass, kept on the engine instance."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


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
    num_threads: int | None = None  # per rank under tensor parallelism (default: the cores split over the ranks)
    seed: int = 0
    # Processes sharing the model by attention heads and MLP columns (engine on rank 0; engine/parallel/).
    tensor_parallel_size: int = 1
    # Stream decoder layers in from host memory, at most this many resident at once (None: all resident;
    # engine/offload.py).
    offload_max_resident_layers: int | None = None
    # speculative decoding of greedy rows (engine/decoding/speculative.py): off | ngram (prompt lookup) | draft (draft_model)
    speculative: str = "off"
    num_speculative_tokens: int = 4
    draft_model: str | None = None
    spec_ngram_min: int = 2
    spec_ngram_max: int = 4
    spec_max_running: int = 2  # speculate only while at most this many sequences run (measured: docs/PERFORMANCE.md)
    # LoRA adapters (engine/lora/): names -> PEFT directories or s3:// prefixes; requests may also name a directory.
    lora_adapters: dict[str, str] = field(default_factory=dict)
    max_loras: int = 8  # adapters resident at once; others load on demand, the least recently used evicted
    max_lora_rank: int = 16  # adapters of a higher rank are refused; every slot is laid out for this rank
    lora_fetch: Callable[[str], Path] | None = None  # an s3:// (or other) source -> local directory; None: local only

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a positive power of two, got {self.block_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if not 0.0 < self.kv_cache_fraction <= 0.95:
            raise ValueError(f"kv_cache_fraction must be in (0, 0.95], got {self.kv_cache_fraction}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.offload_max_resident_layers is not None and self.offload_max_resident_layers < 1:
            raise ValueError(f"offload_max_resident_layers must be >= 1, got {self.offload_max_resident_layers}")
        if self.tensor_parallel_size > 1 and self.offload_max_resident_layers is not None:
            raise ValueError("tensor_parallel_size > 1 and offload_max_resident_layers cannot be combined yet; "
                             "use one or the other")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.speculative not in ("off", "ngram", "draft"):
            raise ValueError(f"speculative must be off, ngram or draft, got {self.speculative!r}")
        if self.speculative == "draft" and self.tensor_parallel_size > 1:
            raise ValueError("speculative='draft' cannot be combined with tensor_parallel_size > 1 yet; use 'ngram'")
        if self.speculative == "draft" and not self.draft_model:
            raise ValueError("speculative='draft' needs draft_model (an alias, HF directory or GGUF file)")
        if self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}")
        if self.spec_max_running < 0:
            raise ValueError(f"spec_max_running must be >= 0, got {self.spec_max_running}")
        if not 1 <= self.spec_ngram_min <= self.spec_ngram_max:
            raise ValueError(f"need 1 <= spec_ngram_min <= spec_ngram_max, got {self.spec_ngram_min} and "
                             f"{self.spec_ngram_max}")
        if self.max_loras < 1 or self.max_lora_rank < 1:
            raise ValueError(f"max_loras and max_lora_rank must be >= 1, got {self.max_loras} and "
                             f"{self.max_lora_rank}")
        if self.lora_adapters and self.tensor_parallel_size > 1:
            raise ValueError("lora_adapters cannot be combined with tensor_parallel_size > 1 yet; serve adapters "
                             "from single-process workers")
        if self.quantization not in ("none", "int8"):
            raise ValueError(f"quantization must be none or int8, got {self.quantization!r}")
        if self.quantization != "none" and (self.tensor_parallel_size > 1 or self.offload_max_resident_layers):
            raise ValueError("quantization cannot be combined with tensor_parallel_size > 1 or "
                             "offload_max_resident_layers yet; use one or the other")
