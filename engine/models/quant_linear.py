"""int8 weight-only linear layers: int8 weights with one float scale per output channel (row).

Only the decoder layers' projections are quantized; the embeddings and the lm_head stay in the model dtype (the
lm_head reads the embedding table when the two are tied, and both are the most error-sensitive tensors).

Per-row quantization makes the rows independent, so the fused q/k/v and gate/up weights are quantized shard by
shard as the checkpoint streams in, with the same result as quantizing the fused weight: no float copy of the
quantized layers is ever held in full.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# Up to this many tokens the CPU path uses aten's int8 weight-only matmul; on larger chunks that kernel (a dot
# product per output on AVX2) falls behind a float matmul on a widened weight. Measured in docs/PERFORMANCE.md.
INT8_MM_MAX_TOKENS = 32


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8 [rows, cols], scale fp32 [rows]) with weight ~= q * scale[:, None]."""
    w = weight.float()
    scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """`y = (x @ q.T) * scale + b` for x [T, in_features]; q int8 [out, in], scale fp32 [out].

    CPU, up to INT8_MM_MAX_TOKENS rows: `aten._weight_int8pack_mm` with bf16 activations (its fp32 variant is ~10x
    slower on CPU), reading a quarter of the fp32 weight bytes. Otherwise: a matmul on the weight widened to fp32 (CPU) or to the
    activation dtype (CUDA), with the scale applied to the output; plain torch ops, untested on a GPU here.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        # Parameters (not buffers) so the model's load_weights finds them by name like any other weight.
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(out_features, dtype=torch.float32, device=device),
                                         requires_grad=False)
        self.bias = (nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
                     if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "Int8Linear":
        """Quantize a loaded nn.Linear."""
        weight = linear.weight.detach()
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, weight.dtype, weight.device)
        q, scale = quantize_rows(weight)
        module.weight.data.copy_(q)
        module.weight_scale.data.copy_(scale)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.shape[0] <= INT8_MM_MAX_TOKENS:
            y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.weight,
                                                   self.weight_scale.to(torch.bfloat16)).to(x.dtype)
        else:
            # CPUs without native bf16 run a bf16 F.linear ~4x slower than fp32, so the CPU widens to fp32.
            dtype = torch.float32 if x.device.type == "cpu" else x.dtype
            y = (F.linear(x.to(dtype), self.weight.to(dtype)) * self.weight_scale.to(dtype)).to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def use_int8_linears(model: nn.Module) -> int:
    """Swap every nn.Linear inside the decoder layers for an empty Int8Linear of the same shape and device.

    Call it before the weights are loaded (typically on the meta device); returns how many were swapped.
    """
    swapped = 0
    for parent in list(model.layers.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                weight = child.weight
                setattr(parent, name, Int8Linear(child.in_features, child.out_features, child.bias is not None,
                                                 weight.dtype, weight.device))
                swapped += 1
    return swapped


def is_quantized_weight(hf_name: str) -> bool:
    """Whether a HF Llama-family checkpoint tensor lands in an Int8Linear weight (the decoder projections)."""
    return ".layers." in f".{hf_name}" and hf_name.endswith("_proj.weight")


def quantize_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass a checkpoint stream through, quantizing float projection weights to (int8 weight, `*_scale`) pairs.

    Tensors that are already int8 (a checkpoint written quantized) and all other tensors pass unchanged.
    """
    for name, tensor in weights:
        if is_quantized_weight(name) and tensor.is_floating_point():
            q, scale = quantize_rows(tensor)
            yield name, q
            yield f"{name}_scale", scale
        else:
            yield name, tensor
