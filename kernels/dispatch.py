"""Chooses the kernel backend for a device: Triton on CUDA, the PyTorch twins elsewhere."""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import torch

BACKEND_ENV = "TIDE_KERNELS"
_BACKEND_MODULES = {"triton": "kernels.triton_ops", "torch": "kernels.torch_ops"}
_OP_NAMES = (
    "write_kv_cache",
    "paged_attention",
    "fused_add_rms_norm",
    "rms_norm",
    "rotary_embedding",
    "silu_and_mul",
)


@dataclass(frozen=True)
class KernelOps:
    """The engine's hot-path ops from one backend; every backend has the same signatures."""

    backend: str
    write_kv_cache: Callable[..., None]
    paged_attention: Callable[..., torch.Tensor]
    fused_add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    rms_norm: Callable[..., torch.Tensor]
    rotary_embedding: Callable[..., None]
    silu_and_mul: Callable[..., torch.Tensor]

    @classmethod
    def from_module(cls, backend: str, module: ModuleType) -> "KernelOps":
        return cls(backend=backend, **{name: getattr(module, name) for name in _OP_NAMES})


def get_ops(device: torch.device) -> KernelOps:
    """Returns the ops for `device`: Triton on CUDA, PyTorch twins otherwise.

    The environment variable TIDE_KERNELS=triton|torch overrides the choice; it is read on every call. Triton on a
    CPU device only makes sense with TRITON_INTERPRET=1 set before the first import (used by the tests).
    """
    backend = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not backend:
        backend = "triton" if torch.device(device).type == "cuda" else "torch"
    if backend not in _BACKEND_MODULES:
        raise ValueError(f"{BACKEND_ENV} must be 'triton' or 'torch', got {backend!r}")
    try:
        module = importlib.import_module(_BACKEND_MODULES[backend])
    except ImportError as exc:
        raise ImportError(
            f"the {backend} kernel backend cannot be imported ({exc}); install tide[triton] "
            f"or set {BACKEND_ENV}=torch"
        ) from exc
    return KernelOps.from_module(backend, module)
