"""Tiny random models of each supported architecture (their configs), and what their KV cache costs."""
from __future__ import annotations

from collections.abc import Callable

from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config, Qwen3Config

# Small enough to build and run in well under a second, large enough to exercise GQA (4 query heads sharing 2 KV
# heads). The vocabulary is SmolLM2's so its tokenizer and chat template work on these models.
TINY_SHAPE = dict(
    vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=128, max_position_embeddings=512,
    # The default 0.02 gives near-uniform logits whose greedy output is one token repeated; 0.2 gives varied text
    # (checked in tests/engine/test_loader.py).
    initializer_range=0.2,
)

TINY_CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama": lambda: LlamaConfig(**TINY_SHAPE, tie_word_embeddings=False),
    "qwen2": lambda: Qwen2Config(**TINY_SHAPE, tie_word_embeddings=True),  # q/k/v projections carry a bias
    # Qwen3 sets head_dim apart from hidden_size / heads (here 32, not 16) and normalizes q and k per head.
    "qwen3": lambda: Qwen3Config(**TINY_SHAPE, head_dim=32, tie_word_embeddings=False),
    "mistral": lambda: MistralConfig(**TINY_SHAPE, sliding_window=None, tie_word_embeddings=False),
    "llama3_rope": lambda: LlamaConfig(
        **TINY_SHAPE, tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 128},
    ),
}


def kv_bytes_for(model_dir, tokens: int) -> int:
    cfg = AutoModelForCausalLM.from_pretrained(model_dir).config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4 * tokens
