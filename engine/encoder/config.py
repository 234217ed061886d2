"""Embedding engine configuration: one dataclass, kept on the engine instance."""
from __future__ import annotations

from dataclasses import dataclass

from tide.engine.encoder.pooling import POOLING_MODES


@dataclass
class EncoderConfig:
    """Knobs of one embedding engine.

    A forward holds at most `max_num_seqs` texts and `max_num_batched_tokens` padded tokens (texts x the longest
    of them); the budget must hold one text of the model's full length.
    """

    model: str = "all-minilm-l6-v2"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto as the generation engine picks it)
    device: str = "auto"  # auto | cpu | cuda
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    num_threads: int | None = None  # torch threads on CPU (default: all cores)
    pooling: str | None = None  # mean | cls | last | max: replaces the model's own (required without one)
    matryoshka: bool = False  # the model was trained for shorter vectors: requests may ask for `dimensions`
    max_seq_length: int | None = None  # the truncation limit (default: the model's own, as sentence-transformers)
    block_size: int = 16  # decoder models only: the paged attention's block, for the runner's scratch cache

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_seqs and max_num_batched_tokens must be >= 1, got {self.max_num_seqs} and "
                             f"{self.max_num_batched_tokens}")
        if self.pooling is not None and self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {', '.join(POOLING_MODES)}, got {self.pooling!r}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ValueError(f"max_seq_length must be >= 1, got {self.max_seq_length}")
