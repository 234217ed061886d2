"""GGUF weights -> int8 per-channel safetensors, tensor by tensor, without an fp32 copy of the whole model.

The float conversion (engine/loader.py) has transformers dequantize every tensor of the file to fp32 at once, then
copies them into a model: two fp32 copies of the whole model in memory. Here each decoder projection is read from
the memory-mapped file a slab of rows at a time, dequantized, and requantized to symmetric int8 with one scale per
row (output channel); only the int8 result is kept. Embeddings and norms are dequantized to fp32 (they stay
unquantized in the engine).

Q8_0 stores int8 values with one fp16 scale per block of 32; the per-row scale is the largest block amplitude in
the row, so the block(s) holding it keep their int8 values exactly and the others are rescaled onto that grid.
Q4_0/Q4_1/Q4_K (and any other type the `gguf` package dequantizes) go through the same row-slab path.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from gguf import MODEL_ARCH_NAMES, GGUFReader, dequantize, get_tensor_name_map
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, read_field

from tide.engine.models.quant_linear import is_quantized_weight, quantize_rows

# Written into an int8 directory: how its projection weights are stored (engine/startup.py checks for it).
QUANT_FILE = "tide_quantization.json"
# Rows dequantized at once: bounds the float temporary to ROW_SLAB x in_features fp32 values.
ROW_SLAB = 2048


def write_int8_weights(gguf: Path, config: PretrainedConfig, out_dir: Path) -> None:
    """Write `gguf`'s tensors into `out_dir/model.safetensors` with HF names, projections as int8 + `*_scale`.

    Sets `config.architectures` (a GGUF config has none) so the directory loads like any HF directory.
    """
    reader = GGUFReader(gguf)
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(config)
    config.architectures = [type(hf_model).__name__]
    architecture = read_field(reader, "general.architecture")[0]
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    names = _gguf_to_hf_names(architecture, list(hf_model.state_dict()), config.num_hidden_layers)
    tensors: dict[str, torch.Tensor] = {}
    source_types: dict[str, int] = {}
    for tensor in reader.tensors:
        hf_name = names.get(tensor.name)
        if hf_name is None:
            continue
        source_types[tensor.tensor_type.name] = source_types.get(tensor.tensor_type.name, 0) + 1
        if is_quantized_weight(hf_name):
            q, scale = int8_rows(tensor.data, tensor.tensor_type)
            # llama.cpp permutes q/k rows for its rotary layout; the processor undoes it (rows move with their scale).
            tensors[hf_name] = _processed(processor, q.numpy(), tensor.name)
            tensors[f"{hf_name}_scale"] = _processed(processor, scale.numpy(), tensor.name)
        else:
            tensors[hf_name] = _processed(processor, dequantize(tensor.data, tensor.tensor_type), tensor.name)
    save_file(tensors, out_dir / "model.safetensors")
    (out_dir / QUANT_FILE).write_text(json.dumps({"method": "int8", "scales": "per output channel, symmetric",
                                                  "source_types": source_types}))


def int8_rows(data: np.ndarray, tensor_type) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 of a GGUF 2-D tensor's raw rows ([rows, row bytes]), dequantized ROW_SLAB rows at a time."""
    rows = data.shape[0]
    q, scale = None, torch.empty(rows, dtype=torch.float32)
    for start in range(0, rows, ROW_SLAB):
        slab = torch.from_numpy(np.ascontiguousarray(dequantize(data[start:start + ROW_SLAB], tensor_type)))
        if q is None:
            q = torch.empty(rows, slab.shape[1], dtype=torch.int8)
        q[start:start + slab.shape[0]], scale[start:start + slab.shape[0]] = quantize_rows(slab)
    return q, scale


def _gguf_to_hf_names(architecture: str, hf_names: list[str], num_layers: int) -> dict[str, str]:
    """GGUF tensor name -> HF name, from the `gguf` package's name table (built once; transformers' helper rebuilds
    it for every submodule, ~400 times for a 30-layer model)."""
    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == architecture), None)
    if arch is None:
        raise ValueError(f"GGUF architecture {architecture!r} is unknown to the installed gguf package")
    table = get_tensor_name_map(arch, num_layers)
    names = {}
    for hf_name in hf_names:
        module, suffix = hf_name.rsplit(".", 1)
        gguf_module = table.get_name(module)
        if gguf_module is not None:
            names[f"{gguf_module}.{suffix}"] = hf_name
    return names


def _processed(processor: TensorProcessor, array: np.ndarray, gguf_name: str) -> torch.Tensor:
    # Copies only what is not already a writable C-contiguous array (F32 tensors are read-only views of the file).
    return torch.from_numpy(np.require(processor.process(weights=array, name=gguf_name).weights, requirements="CW"))
