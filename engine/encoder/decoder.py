"""Decoder models as embedders (Qwen3-Embedding, e5-mistral): the Llama family's final hidden states, pooled.

The model and its runner are the generation engine's own; the runner's KV cache is only scratch for one forward,
sized to the embedding engine's token budget, and `ModelRunner.hidden_states` is the one seam it goes through.
"""
from __future__ import annotations

from pathlib import Path

import torch

from tide.engine.encoder.config import EncoderConfig
from tide.engine.encoder.packing import PackedBatch
from tide.engine.model_loading import load_model
from tide.engine.model_runner import ModelRunner


class DecoderEncoder:
    """Called with a packed batch: [T, hidden] final (normed) hidden states of its texts, causal attention."""

    def __init__(self, hf_config, model_dir: Path, device: torch.device, dtype: torch.dtype, config: EncoderConfig
                 ) -> None:
        model = load_model(hf_config, model_dir, device, dtype)
        self.max_tokens = model.args.max_position_embeddings
        self.hidden_size = model.args.hidden_size
        block_size = config.block_size
        # Each text rounds up to whole blocks: a batch's tokens need at most budget / block + one block per text.
        num_blocks = -(-config.max_num_batched_tokens // block_size) + config.max_num_seqs
        self.runner = ModelRunner(model, num_blocks, block_size, self.max_tokens, device, dtype)

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        return self.runner.hidden_states(batch.input_ids, batch.lengths)
