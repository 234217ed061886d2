"""Rank 0's side of a tensor-parallel group: spawning the other ranks, starting them, announcing steps, stopping.

Each worker has a pipe from rank 0. A worker waits on its pipe between steps rather than inside a collective, so an
idle engine never runs into the collective timeout, and a dead rank 0 shows up as end-of-file. The pipe carries
the small per-step header; the tensors travel by torch.distributed broadcast (gloo on CPU, nccl on GPU).
"""
from __future__ import annotations

import logging
import socket
import weakref

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tide.engine.config import EngineConfig
from tide.engine.models.llama import ForwardContext, ModelArgs
from tide.engine.parallel.membership import COLLECTIVE_TIMEOUT_S, WorkerSpec, init_group
from tide.engine.parallel.sharding import TensorShard, check_divisible
from tide.engine.parallel.step import pack_step
from tide.engine.parallel.worker import worker_main

logger = logging.getLogger("tide.engine")

# How long rank 0 waits for the other ranks to load their shards.
READY_TIMEOUT_S = 600.0

class TensorParallelGroup:
    """Ranks 1..N-1 as spawned processes, with rank 0 (this process) joined to their group."""

    def __init__(self, specs: list[WorkerSpec], processes: list, conns: list) -> None:
        self.world_size = specs[0].world_size
        self.shard = TensorShard(0, self.world_size)
        self._processes = processes
        self._conns = conns
        self._finalizer = weakref.finalize(self, _shutdown, processes, conns)

    @classmethod
    def start(cls, config: EngineConfig, model_dir, hf_config, device: torch.device, dtype: torch.dtype,
              num_threads: int) -> "TensorParallelGroup":
        """Check the model divides, spawn ranks 1..N-1 and join their group as rank 0."""
        world = config.tensor_parallel_size
        arch = (getattr(hf_config, "architectures", None) or [""])[0]
        check_divisible(ModelArgs.from_hf_config(hf_config, arch), world)
        if dist.is_initialized():
            raise RuntimeError("this process already holds a torch.distributed group (another tensor-parallel "
                               "engine?); close that engine first: one tensor-parallel engine per process")
        port = _free_port()
        specs = [WorkerSpec(rank, world, port, str(model_dir), device.type, dtype, config.block_size, num_threads,
                            COLLECTIVE_TIMEOUT_S) for rank in range(world)]
        ctx = mp.get_context("spawn")
        processes, conns = [], []
        for spec in specs[1:]:
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(target=worker_main, args=(spec, child_end), name=f"tide-tp-rank{spec.rank}",
                                  daemon=True)
            process.start()
            child_end.close()
            processes.append(process)
            conns.append(parent_end)
        group = cls(specs, processes, conns)
        try:
            init_group(specs[0])
        except BaseException:
            group.close()
            raise
        logger.info("tensor parallel: %d ranks (%s), rank 0 is this process", world, dist.get_backend())
        return group

    def start_workers(self, num_blocks: int, max_model_len: int) -> None:
        """Wait until every rank has loaded its shard, then have them allocate the same KV cache as rank 0."""
        for rank, (process, conn) in enumerate(zip(self._processes, self._conns), start=1):
            if not conn.poll(READY_TIMEOUT_S):
                raise RuntimeError(f"tensor-parallel rank {rank} did not load its shard in {READY_TIMEOUT_S:.0f} s")
            try:
                status, detail = conn.recv()
            except EOFError:
                process.join(5)
                status, detail = "exited", f"its process ended (exit code {process.exitcode})"
            if status != "ready":
                raise RuntimeError(f"tensor-parallel rank {rank} failed to start: {detail}")
        for conn in self._conns:
            conn.send((num_blocks, max_model_len))

    def announce_step(self, input_ids: torch.Tensor, ctx: ForwardContext) -> None:
        """Wake every worker with this step's header, then broadcast its tensors."""
        header, payload = pack_step(input_ids, ctx)
        for conn in self._conns:
            conn.send(header)
        dist.broadcast(payload, src=0)

    def failure(self, exc: BaseException) -> RuntimeError:
        """The error to raise when a step failed: names the ranks that died, if any did."""
        dead = [f"rank {rank} (exit code {p.exitcode})" for rank, p in enumerate(self._processes, start=1)
                if not p.is_alive()]
        if dead:
            return RuntimeError(f"tensor-parallel {', '.join(dead)} died; the engine cannot continue: {exc}")
        return RuntimeError(f"tensor-parallel step failed: {exc}")

    def close(self) -> None:
        """Stop the workers and leave the group; the engine cannot run afterwards."""
        self._finalizer()


def _shutdown(processes: list, conns: list) -> None:
    for conn in conns:
        try:
            conn.send(None)
        except (BrokenPipeError, OSError):
            pass
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
    for conn in conns:
        conn.close()
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
