"""Tensor parallelism: one model split over several processes by attention heads and MLP columns.

Rank 0 runs the whole engine (scheduler, sampler) and is the process that created it; ranks 1..N-1 are spawned
worker processes that run the same forward on their shard of every step (engine/parallel/worker.py).
"""
from importlib import import_module

_EXPORTS = {"TensorParallelGroup": "tide.engine.parallel.group", "TensorShard": "tide.engine.parallel.sharding"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    # Lazy, so importing one submodule (sharding, from the model loader) does not pull in the process group.
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
