"""Tensor parallelism: one model split over several processes by attention heads and MLP columns.

Rank 0 runs the whole engine (scheduler, sampler) and is the process that created it; ranks 1..N-1 are spawned
worker processes that run the same forward on their shard of every step (engine/parallel/worker.py).
"""
from tide.engine.parallel.group import TensorParallelGroup
from tide.engine.parallel.sharding import TensorShard

__all__ = ["TensorParallelGroup", "TensorShard"]
