"""The adapters an engine serves: names -> sources, up to `max_loras` resident, least recently used evicted, loads
off the step thread.

An adapter is named in the engine's settings (`lora_adapters`: name -> directory or `s3://` prefix) or by its local
directory. The first request for an adapter loads and checks it on the caller's thread, so a bad adapter is refused
right there, by name. The scheduler admits a sequence only once its adapter is resident (`admit`, its gate): making
an adapter resident evicts the least recently used one that no running sequence uses; an adapter that is no longer
in memory is read again on a loader thread while the step loop goes on with other sequences.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from tide.engine.lora.adapter import AdapterError, LoraAdapter, load_adapter
from tide.engine.lora.batch import LoraBatch, LoraSlots, projection_keys, row_runs
from tide.engine.models.llama import ModelArgs
from tide.engine.sampling_params import SamplingParams
from tide.engine.sequence import Sequence

logger = logging.getLogger("tide.engine")

Fetch = Callable[[str], Path]  # an adapter's source (a directory or an s3:// prefix) -> a local directory


def local_only(source: str) -> Path:
    if "://" in source:
        raise AdapterError(f"adapter source {source!r}: this engine reads adapters from local directories only "
                           "(workers fetch s3:// adapters through their storage settings)")
    return Path(source)


class LoraRegistry:
    """Loads, keeps and hands out LoRA adapters for one engine's model. `check` may run on any thread; `admit` and
    `batch` run on the step thread."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: torch.device, sources: dict[str, str],
                 max_loras: int, max_rank: int, fetch: Fetch = local_only) -> None:
        self.args: ModelArgs = model.args
        self.dtype, self.device = dtype, device
        self.sources = dict(sources)
        self.max_loras, self.max_rank = max_loras, max_rank
        self.fetch = fetch
        self.keys = projection_keys(model)
        self.add_lora = model.ops.add_lora
        self.slots = LoraSlots(self.args, max_loras, max_rank, dtype, device)
        self._lock = threading.Lock()
        self._checked: set[str] = set()
        self._staged: dict[str, LoraAdapter] = {}  # loaded by `check`, not yet resident
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> slot, least recently used first
        self._free_slots = list(range(max_loras - 1, -1, -1))
        self._loading: dict[str, Future] = {}
        self._loader: ThreadPoolExecutor | None = None
        self.loads = 0  # adapters read from their source (first checks and reloads after eviction)

    # ---- intake (any thread) --------------------------------------------------------------------------------------

    def check(self, params: SamplingParams) -> None:
        """Raise ValueError naming the adapter when a request's adapter cannot be served; load it the first time."""
        name = params.lora
        if name is None:
            return
        if params.use_beam_search:
            raise ValueError(f"use_beam_search cannot be combined with a LoRA adapter ({name!r}) yet")
        with self._lock:
            if name in self._checked:
                return
        adapter = self._load(name)
        with self._lock:
            self._checked.add(name)
            if name not in self._resident and len(self._staged) < self.max_loras:
                self._staged[name] = adapter

    # ---- the scheduler's gate (step thread) -----------------------------------------------------------------------

    def admit(self, seq: Sequence, running: list[Sequence]) -> bool:
        """Whether `seq` may run now: no adapter, or its adapter is (or has just been made) resident."""
        name = seq.params.lora
        if name is None:
            return True
        with self._lock:
            if name in self._resident:
                self._resident.move_to_end(name)
                return True
            adapter = self._staged.get(name) or self._loaded(name)
            slot = None if adapter is None else self._free_slot({s.params.lora for s in running})
            if slot is None:
                return False
            self._staged.pop(name, None)
            self._resident[name] = slot
        self.slots.install(slot, adapter)  # the step thread is the only one that reads or writes the slots
        logger.info("LoRA adapter %s resident (rank %d, %.1f MiB)", name, adapter.config.rank, adapter.nbytes / 2**20)
        return True

    def batch(self, scheduled: list[tuple[Sequence, int]]) -> LoraBatch | None:
        """The step's LoRA runs, or None when no scheduled row uses an adapter (the base path runs untouched)."""
        if not self._resident:
            return None
        runs = row_runs(scheduled, self._resident)
        return LoraBatch(self.slots, self.keys, runs, self.add_lora) if runs else None

    @property
    def resident(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def close(self) -> None:
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)

    # ---- internals ------------------------------------------------------------------------------------------------

    def _loaded(self, name: str) -> LoraAdapter | None:
        """A reload started or finished off the step thread (called with the lock held)."""
        future = self._loading.get(name)
        if future is None:
            if self._loader is None:
                self._loader = ThreadPoolExecutor(1, thread_name_prefix="tide-lora-load")
            self._loading[name] = self._loader.submit(self._load, name)
            return None
        if not future.done():
            return None
        del self._loading[name]
        # The adapter loaded once already (`check`); failing now means its files changed underneath the worker.
        return future.result()

    def _free_slot(self, in_use: set[str | None]) -> int | None:
        """A free slot, else the slot of the least recently used adapter no running sequence uses (evicted)."""
        if self._free_slots:
            return self._free_slots.pop()
        victim = next((name for name in self._resident if name not in in_use), None)
        return None if victim is None else self._resident.pop(victim)

    def _load(self, name: str) -> LoraAdapter:
        source = self.sources.get(name, name)
        if source == name and not Path(name).is_absolute() and "://" not in name:
            raise AdapterError(f"unknown LoRA adapter {name!r}: register it in TIDE_LORA_ADAPTERS (name=directory "
                               f"or s3:// prefix) or give an absolute path; known: {sorted(self.sources) or 'none'}")
        adapter = load_adapter(name, self.fetch(source), self.args, self.dtype, self.device, self.max_rank)
        self.loads += 1
        return adapter


def build_registry(config, model: nn.Module, device: torch.device, dtype: torch.dtype) -> "LoraRegistry | NoAdapters":
    """The engine's adapters as `config` (an EngineConfig) sets them."""
    if config.tensor_parallel_size > 1:
        return NoAdapters("LoRA adapters are not supported with tensor_parallel_size > 1 yet")
    return LoraRegistry(model, dtype, device, config.lora_adapters, config.max_loras, config.max_lora_rank,
                        config.lora_fetch or local_only)


class NoAdapters:
    """The gate and batch source of an engine that serves no adapters (tensor-parallel groups, for now)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def check(self, params: SamplingParams) -> None:
        if params.lora is not None:
            raise ValueError(f"LoRA adapter {params.lora!r} cannot be served: {self.reason}")

    def admit(self, seq: Sequence, running: list[Sequence]) -> bool:
        return True

    def batch(self, scheduled: list[tuple[Sequence, int]]) -> None:
        return None

    def close(self) -> None:
        pass
