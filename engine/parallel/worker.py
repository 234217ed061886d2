"""Ranks 1..N-1 of a tensor-parallel engine: load this rank's shard, then run the forward of every step rank 0
announces, until rank 0 says stop or goes away."""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from tide.engine.parallel.membership import WorkerSpec, init_group
from tide.engine.parallel.sharding import TensorShard
from tide.engine.parallel.step import receive_step

logger = logging.getLogger("tide.engine")


def worker_main(spec: WorkerSpec, conn) -> None:
    """Process entry point (spawned by TensorParallelGroup.start)."""
    try:
        init_group(spec)
        runner = _load(spec, conn)
        if runner is not None:
            _serve(runner, conn)
    except (EOFError, BrokenPipeError):
        pass  # rank 0 is gone: nothing left to serve
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _load(spec: WorkerSpec, conn):
    from tide.engine.loader import load_config
    from tide.engine.model_loading import load_model
    from tide.engine.model_runner import ModelRunner

    device = torch.device(spec.device_type, spec.rank) if spec.device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(spec.num_threads)
    try:
        model = load_model(load_config(spec.model_dir), spec.model_dir, device, spec.dtype,
                           shard=TensorShard(spec.rank, spec.world_size))
    except Exception as exc:  # rank 0 raises it with the rank's number
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return None
    conn.send(("ready", None))
    num_blocks, max_model_len = conn.recv()
    return ModelRunner(model, num_blocks, spec.block_size, max_model_len, device, spec.dtype)


@torch.inference_mode()
def _serve(runner, conn) -> None:
    while (header := conn.recv()) is not None:
        input_ids, ctx = receive_step(header, runner.device, runner.cos_sin_cache)
        runner.model(input_ids, ctx, runner.kv_caches)  # rank 0 alone computes logits
