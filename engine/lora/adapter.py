"""A LoRA adapter in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`), read into the layout of
Tide's fused projections.

For each decoder layer and fused projection (qkv_proj, o_proj, gate_up_proj, down_proj) the adapter holds one
low-rank pair in a fixed layout of `block` (the worker's highest rank) columns per part: `a` [in, parts * block] with
part i's A in columns i * block onwards, and `b` [parts * block, out] with part i's B (scaling folded in) in those
rows and the part's own output columns; zeros elsewhere (an untargeted part, a rank below `block`). So every
adapter's update of a fused projection is `(x @ a) @ b`, and adapters of any rank stack into one batched matmul.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from tide.engine.models.llama import ModelArgs

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# PEFT module name -> (our fused projection, index of its part)
_PARTS = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
          "o_proj": ("o_proj", 0), "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
          "down_proj": ("down_proj", 0)}
# Config fields whose non-default values this reader cannot honour, with the value that means "off".
_UNSUPPORTED = {"use_dora": False, "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {},
                "alpha_pattern": {}, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
                "layer_replication": None, "trainable_token_indices": None, "target_parameters": None}
_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$")


class AdapterError(ValueError):
    """An adapter that cannot be used with this model; the message names the adapter and the reason."""


@dataclass(frozen=True)
class LoraConfig:
    """What Tide reads from `adapter_config.json`."""

    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


@dataclass
class LoraAdapter:
    """One adapter's weights: `pairs[layer][projection] = (a, b)`, absent where it leaves a projection alone."""

    name: str
    config: LoraConfig
    pairs: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.pairs for pair in layer.values() for t in pair)


def read_config(name: str, directory: Path, max_rank: int) -> LoraConfig:
    """Parse and check `adapter_config.json`; AdapterError names what is wrong."""
    path = directory / CONFIG_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise AdapterError(f"adapter {name!r}: {path} does not exist (a PEFT adapter directory holds "
                           f"{CONFIG_FILE} and {WEIGHTS_FILE})") from exc
    except json.JSONDecodeError as exc:
        raise AdapterError(f"adapter {name!r}: {path} is not valid JSON ({exc})") from exc
    if raw.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"adapter {name!r}: peft_type {raw.get('peft_type')!r} is not supported; only LORA is")
    for field, off in _UNSUPPORTED.items():
        if raw.get(field, off) not in (off, None, [], {}):
            raise AdapterError(f"adapter {name!r}: {field}={raw[field]!r} is not supported")
    rank = raw.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"adapter {name!r}: r must be a positive integer, got {rank!r}")
    if rank > max_rank:
        raise AdapterError(f"adapter {name!r} has rank {rank}, above this worker's limit of {max_rank} "
                           f"(TIDE_MAX_LORA_RANK)")
    return LoraConfig(rank=rank, alpha=float(raw.get("lora_alpha", 8)), use_rslora=bool(raw.get("use_rslora")),
                      target_modules=_targets(name, raw.get("target_modules")))


def _targets(name: str, targets) -> tuple[str, ...]:
    """`target_modules` as saved: a list of module names (checked here), or a regex PEFT matched at training time
    (the tensors in the weights file then say what it chose)."""
    if isinstance(targets, str):
        return (targets,)
    if not isinstance(targets, list) or not targets:
        raise AdapterError(f"adapter {name!r}: target_modules must be a list of module names or a regex")
    unknown = sorted(set(targets) - set(_PARTS))
    if unknown:
        raise AdapterError(f"adapter {name!r}: target_modules {unknown} are not supported; an adapter may target "
                           + ", ".join(_PARTS))
    return tuple(targets)


def load_adapter(name: str, directory: Path, args: ModelArgs, dtype: torch.dtype, device: torch.device,
                 max_rank: int) -> LoraAdapter:
    """Read a PEFT adapter directory into fused low-rank pairs (blocks of `max_rank`) for a model of shape `args`."""
    config = read_config(name, directory, max_rank)
    path = directory / WEIGHTS_FILE
    if not path.exists():
        raise AdapterError(f"adapter {name!r}: {path} does not exist")
    raw: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        match = _KEY.match(key)
        if match is None or match.group(2) not in _PARTS:
            raise AdapterError(f"adapter {name!r}: tensor {key!r} has no place in a {args.num_layers}-layer "
                               "Llama-family model")
        layer, module, which = int(match.group(1)), match.group(2), match.group(3)
        if layer >= args.num_layers:
            raise AdapterError(f"adapter {name!r}: tensor {key!r} names layer {layer}, but the model has "
                               f"{args.num_layers}")
        raw.setdefault((layer, module), {})[which] = tensor
    pairs = [_fuse_layer(name, config, args, layer, raw, max_rank, dtype, device) for layer in range(args.num_layers)]
    if not any(pairs):
        raise AdapterError(f"adapter {name!r}: {path} holds no LoRA weights")
    return LoraAdapter(name=name, config=config, pairs=pairs)


def _fuse_layer(name: str, config: LoraConfig, args: ModelArgs, layer: int, raw, block: int, dtype: torch.dtype,
                device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One layer's per-module A and B laid into one (a, b) per fused projection it targets."""
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for fused, (in_features, slices) in fused_shapes(args).items():
        modules = [m for m, (f, _) in _PARTS.items() if f == fused and (layer, m) in raw]
        if not modules:
            continue
        r = config.rank
        a = torch.zeros(in_features, len(slices) * block, dtype=torch.float32)
        b = torch.zeros(len(slices) * block, slices[-1][0] + slices[-1][1], dtype=torch.float32)
        for module in modules:
            part = _PARTS[module][1]
            start, size = slices[part]
            lora_a, lora_b = _pair(name, raw[(layer, module)], layer, module, (r, in_features), (size, r))
            a[:, part * block:part * block + r] = lora_a.float().T
            b[part * block:part * block + r, start:start + size] = lora_b.float().T * config.scaling
        out[fused] = (a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
    return out


def _pair(name: str, tensors: dict[str, torch.Tensor], layer: int, module: str, a_shape, b_shape):
    for which, shape in (("A", a_shape), ("B", b_shape)):
        tensor = tensors.get(which)
        if tensor is None:
            raise AdapterError(f"adapter {name!r}: layers.{layer}.{module} has no lora_{which} weight")
        if tuple(tensor.shape) != shape:
            raise AdapterError(f"adapter {name!r}: layers.{layer}.{module}.lora_{which} has shape "
                               f"{tuple(tensor.shape)}, expected {shape} for this model and r")
    return tensors["A"], tensors["B"]


def fused_shapes(args: ModelArgs) -> dict[str, tuple[int, list[tuple[int, int]]]]:
    """Each fused projection's (in_features, [(offset, size) of each part in its output])."""
    q, kv = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
    hidden, inter = args.hidden_size, args.intermediate_size
    return {"qkv_proj": (hidden, [(0, q), (q, kv), (q + kv, kv)]), "o_proj": (q, [(0, hidden)]),
            "gate_up_proj": (hidden, [(0, inter), (inter, inter)]), "down_proj": (inter, [(0, hidden)])}
