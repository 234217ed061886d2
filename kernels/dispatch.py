"""Chooses the kernel backend for a device: Triton on CUDA, the native C++ library on CPU, the PyTorch twins when
the native library cannot be built."""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import torch

logger = logging.getLogger("tide.kernels")

BACKEND_ENV = "TIDE_KERNELS"
_BACKEND_MODULES = {
    "triton": "tide.kernels.triton_ops", "native": "tide.kernels.native_ops", "torch": "tide.kernels.torch_ops",
}
_logged: set[str] = set()
_OP_NAMES = (
    "write_kv_cache",
    "paged_attention",
    "fused_add_rms_norm",
    "rms_norm",
    "rotary_embedding",
    "rotary_write_kv_cache",
    "silu_and_mul",
    "add_lora",
    "argmax",
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
    rotary_write_kv_cache: Callable[..., None]
    silu_and_mul: Callable[..., torch.Tensor]
    add_lora: Callable[..., None]
    argmax: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def from_module(cls, backend: str, module: ModuleType) -> "KernelOps":
        return cls(backend=backend, **{name: getattr(module, name) for name in _OP_NAMES})


def get_ops(device: torch.device) -> KernelOps:
    """Returns the ops for `device`: Triton on CUDA; on CPU the native library, or the PyTorch twins without it.

    The environment variable TIDE_KERNELS=triton|native|torch overrides the choice; it is read on every call. Triton
    on a CPU device only makes sense with TRITON_INTERPRET=1 set before the first import (used by the tests). The
    CPU choice is logged once per process: which paged attention runs, or why the native one does not.
    """
    backend = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not backend:
        backend = "triton" if torch.device(device).type == "cuda" else "native"
    if backend not in _BACKEND_MODULES:
        raise ValueError(f"{BACKEND_ENV} must be 'triton', 'native' or 'torch', got {backend!r}")
    if backend == "native":
        from tide.kernels import native

        if native.load() is None:
            backend = "torch"
        _log_once(f"CPU paged attention: {native.status()}")
    try:
        module = importlib.import_module(_BACKEND_MODULES[backend])
    except ImportError as exc:
        raise ImportError(
            f"the {backend} kernel backend cannot be imported ({exc}); install tide[triton] "
            f"or set {BACKEND_ENV}=torch"
        ) from exc
    return KernelOps.from_module(backend, module)


def cpu_attention_path() -> str:
    """What paged attention runs on CPU in this process, in words (printed by `tide bench`)."""
    from tide.kernels import native

    if os.environ.get(BACKEND_ENV, "").strip().lower() == "torch":
        return f"torch twin ({BACKEND_ENV}=torch)"
    return native.status()


def _log_once(line: str) -> None:
    if line not in _logged:
        _logged.add(line)
        logger.info(line)
