"""Model registry: HF architecture name -> implementation."""
from __future__ import annotations

from typing import Callable

import torch

from tide.engine.models.llama import LlamaForCausalLM, ModelArgs

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": LlamaForCausalLM,  # Llama 2/3, SmolLM2
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
}


def build_model(hf_config, ops, reshape: Callable[[ModelArgs], ModelArgs] | None = None) -> LlamaForCausalLM:
    """Instantiate the implementation for `hf_config.architectures[0]` on the meta device (no weights yet).

    `reshape` turns the checkpoint's shape into the one this process holds (a tensor-parallel shard).
    """
    architectures = getattr(hf_config, "architectures", None) or []
    arch = architectures[0] if architectures else "<none given in config.json>"
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"model architecture {arch} is not supported; supported: "
                         + ", ".join(sorted(SUPPORTED_ARCHITECTURES)))
    args = ModelArgs.from_hf_config(hf_config, arch)
    if reshape is not None:
        args = reshape(args)
    with torch.device("meta"):  # skip random init: every weight is loaded from the checkpoint
        return SUPPORTED_ARCHITECTURES[arch](args, ops)
