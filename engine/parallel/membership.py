"""What every rank of a tensor-parallel group shares: its spawn spec and how it joins the torch.distributed group.

A leaf, so rank 0's side (group.py) and the spawned ranks' side (worker.py) both build on it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# A collective that some rank never joins fails after this long instead of hanging the engine (a rank that died
# usually fails it at once: its sockets close).
COLLECTIVE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a spawned rank needs to join the group and load its shard (picklable)."""

    rank: int
    world_size: int
    port: int
    model_dir: str
    device_type: str
    dtype: torch.dtype
    block_size: int
    num_threads: int
    timeout_s: float


def init_group(spec: WorkerSpec) -> None:
    """Join the default torch.distributed group of this tensor-parallel engine."""
    backend = "nccl" if spec.device_type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{spec.port}", rank=spec.rank,
                            world_size=spec.world_size, timeout=timedelta(seconds=spec.timeout_s))
