"""Weight offload: decoder layers live in host memory and stream onto the device a few at a time.

Each layer's weights are bound just before its forward and dropped right after it, while the next layers are fetched
ahead, so at most `max_resident` layers' weights occupy device memory at once; a model larger than the device runs,
at the cost of moving every layer's weights once per step. On GPU the host copy is pinned memory and the copies run
on a side stream, overlapping the previous layers' compute. On CPU, where host and device memory are one, the host
copy is a memory-mapped safetensors file (pages the OS can drop and re-read) and a fetch copies a layer out of it
into ordinary memory, so the weights held at once stay under the cap. Only the layers are offloaded: embeddings,
final norm and lm_head stay resident.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tide.engine.loader import default_cache_dir
from tide.engine.models.cpu_linear import PackedLinear, can_pack, pack_linears

logger = logging.getLogger("tide.engine")

LayerWeights = dict[str, torch.Tensor]


class PinnedStore:
    """GPU: every layer's weights in pinned host memory, copied to the device asynchronously."""

    def __init__(self, layers: list[LayerWeights], device: torch.device) -> None:
        self.host = [{name: t.pin_memory() for name, t in layer.items()} for layer in layers]
        self.device = device

    def fetch(self, index: int) -> LayerWeights:
        return {name: t.to(self.device, non_blocking=True) for name, t in self.host[index].items()}


class MappedStore:
    """CPU: every layer's weights in one memory-mapped safetensors file; a fetch copies a layer out of it."""

    def __init__(self, layers: list[LayerWeights]) -> None:
        default_cache_dir().mkdir(parents=True, exist_ok=True)  # disk next to the models, not a tmpfs /tmp
        directory = Path(tempfile.mkdtemp(prefix="offload-", dir=default_cache_dir()))
        weakref.finalize(self, shutil.rmtree, directory, True)
        path = directory / "layers.safetensors"
        save_file({f"{i}.{name}": t.contiguous() for i, layer in enumerate(layers) for name, t in layer.items()},
                  str(path))
        self.names = [list(layer) for layer in layers]
        self.file = safe_open(str(path), framework="pt")

    def fetch(self, index: int) -> LayerWeights:
        return {name: self.file.get_tensor(f"{index}.{name}").clone() for name in self.names[index]}


class LayerOffloader:
    """Binds each decoder layer's weights around its forward (hooks), keeping at most `max_resident` layers."""

    def __init__(self, layers: nn.ModuleList, max_resident: int, device: torch.device) -> None:
        self.params = [dict(layer.named_parameters()) for layer in layers]
        host = [{name: p.detach() for name, p in params.items()} for params in self.params]
        self.layer_bytes = [sum(t.numel() * t.element_size() for t in layer.values()) for layer in host]
        self.store = PinnedStore(host, device) if device.type == "cuda" else MappedStore(host)
        self.max_resident = max_resident
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.resident: dict[int, tuple[LayerWeights, torch.cuda.Event | None]] = {}
        self.resident_bytes = self.peak_resident_bytes = self.fetches = 0
        self._empty = {p.dtype: torch.empty(0, dtype=p.dtype, device=device)
                       for params in self.params for p in params.values()}
        for index, layer in enumerate(layers):
            self._release(index)
            layer.register_forward_pre_hook(partial(self._before, index))
            layer.register_forward_hook(partial(self._after, index))

    def _before(self, index: int, module: nn.Module, args) -> None:
        self._fetch(index)
        self._bind(index)
        for ahead in range(index + 1, index + self.max_resident):  # the next step's first layers wrap around
            self._fetch(ahead % len(self.params))

    def _after(self, index: int, module: nn.Module, args, output) -> None:
        self._release(index)

    def _fetch(self, index: int) -> None:
        if index in self.resident:
            return
        if self.stream is None:
            self.resident[index] = (self.store.fetch(index), None)
        else:
            with torch.cuda.stream(self.stream):
                tensors = self.store.fetch(index)
                self.resident[index] = (tensors, self.stream.record_event())
        self.fetches += 1
        self.resident_bytes += self.layer_bytes[index]
        self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)

    def _bind(self, index: int) -> None:
        tensors, copied = self.resident[index]
        if copied is not None:
            compute = torch.cuda.current_stream()
            compute.wait_event(copied)
            for t in tensors.values():
                t.record_stream(compute)  # freed only after the compute stream is done with it
        for name, t in tensors.items():
            self.params[index][name].data = t

    def _release(self, index: int) -> None:
        for p in self.params[index].values():
            p.data = self._empty[p.dtype]
        if self.resident.pop(index, None) is not None:
            self.resident_bytes -= self.layer_bytes[index]


def offload_layers(model: nn.Module, device: torch.device, max_resident: int) -> LayerOffloader | None:
    """Move `model` (loaded in host memory) to `device` with its decoder layers offloaded; returns the offloader
    (also kept as `model.offloader`), or None when every layer fits under `max_resident` anyway."""
    num_layers = len(model.layers)
    packs = device.type == "cpu" and can_pack(model.lm_head.weight.dtype)
    if max_resident >= num_layers:
        logger.info("offload: all %d layers fit in %d resident layers; keeping them all on %s", num_layers,
                    max_resident, device)
        model.offloader = None
        model.to(device)
        if packs:
            pack_linears(model)
        return None
    model.offloader = LayerOffloader(model.layers, max_resident, device)
    logger.info("offload: %d layers streamed from host memory, at most %d resident (%.1f MiB)", num_layers,
                max_resident, max_resident * max(model.offloader.layer_bytes) / 2**20)
    model.to(device)
    if packs:  # packing a streamed layer would cost a reorder per fetch; only lm_head is packed
        model.lm_head = PackedLinear(model.lm_head)
    return model.offloader
