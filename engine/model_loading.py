"""Builds a model and loads its weights onto a device: whole, one tensor-parallel shard, int8, or offloaded.

A leaf of the engine's start-up: `engine/startup.py` calls it for the engine's own process and
`engine/parallel/worker.py` for each further tensor-parallel rank.
"""
from __future__ import annotations

import torch

from tide.engine.loader import checkpoint_quantization, iter_weights
from tide.engine.models import build_model
from tide.engine.models.cpu_linear import can_pack, pack_linears
from tide.engine.models.native_layers import NativeLayers
from tide.engine.models.quant_linear import quantize_weights, use_int8_linears
from tide.engine.parallel.sharding import TensorShard
from tide.kernels import get_ops, native


def load_model(hf_config, model_dir, device: torch.device, dtype: torch.dtype, shard: TensorShard | None = None,
               max_resident_layers: int | None = None, quantization: str = "none"):
    """Build the model and load its weights: all of it, or one tensor-parallel `shard` of it, or with its decoder
    layers kept in host memory and streamed in, `max_resident_layers` at a time; int8 linears with `quantization`."""
    ops = get_ops(device)
    model = build_model(hf_config, ops, shard and shard.shard_args)
    model = model.to(dtype)  # cast while still on meta: no throwaway fp32 copy
    weights = iter_weights(model_dir)
    if shard is not None:
        weights = shard.shard_weights(weights)
    if quantization == "int8":
        use_int8_linears(model)
        weights = quantize_weights(weights)  # float checkpoints are quantized tensor by tensor as they stream in
    elif checkpoint_quantization(model_dir) != "none":
        raise ValueError(f"{model_dir} holds int8 weights; load it with quantization int8")
    home = torch.device("cpu") if max_resident_layers is not None else device  # offload loads in host memory
    model = model.to_empty(device=home)
    if model.args.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.load_weights(weights)
    model = model.eval().requires_grad_(False)
    if shard is not None:
        shard.wrap_row_parallel(model)
    if max_resident_layers is not None:
        from tide.engine.offload import offload_layers

        offload_layers(model, device, max_resident_layers)
    elif device.type == "cpu" and can_pack(dtype):
        library = native.load() if ops.backend == "native" else None
        pack_linears(model, library, head=model.lm_head)
        model.native_layers = NativeLayers.build(model, library)
    return model
