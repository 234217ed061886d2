"""Shared fixtures: the real SmolLM2-135M model directory and tiny random models of each supported architecture."""
from __future__ import annotations

import faulthandler
import os
import sys

# Triton kernels run in its interpreter on CPU; the flag must be set before anything imports triton (transformers
# does), or it has no effect.
os.environ.setdefault("TRITON_INTERPRET", "1")

# The checkout's top-level folders (kernels/, engine/, ...) install as tide.*; on sys.path (`python -m pytest` puts
# the working directory there) `kernels/` would shadow Hugging Face's `kernels`, which transformers imports.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _REPO]

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config, Qwen3Config

from tide.engine.loader import load_tokenizer, resolve_model

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


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """HF directory of SmolLM2-135M-Instruct (converted from the packaged GGUF on first use, then cached)."""
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: tiny_model_dir(kind) -> HF directory of a seeded random model, kind one of TINY_CONFIGS.

    Each kind is built once per session and saved with SmolLM2's tokenizer beside it.
    """
    tokenizer = load_tokenizer(smollm2_dir)
    built: dict[str, Path] = {}

    def build(kind: str) -> Path:
        if kind not in built:
            config = TINY_CONFIGS[kind]()
            config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
            config.pad_token_id = tokenizer.pad_token_id
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            path = tmp_path_factory.mktemp(f"tiny-{kind}")
            model.save_pretrained(path, safe_serialization=True)  # also writes architectures and generation config
            tokenizer.save_pretrained(path)
            built[kind] = path
        return built[kind]

    return build


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A thread a test left blocked would hold this process open after the summary, until CI's time limit: give
    the exit a minute, then print every thread's stack and fail."""
    faulthandler.dump_traceback_later(60, exit=True, file=sys.__stderr__)
