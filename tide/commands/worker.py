"""`tide worker`: load one engine, then serve shards from the model's Celery queue on a threads pool."""
from __future__ import annotations

import argparse
import logging
import os
import socket

from tide.options import (
    UsageError,
    add_engine_options,
    add_redis_option,
    embedding_config,
    lora_config,
    speculative_config,
)
from tide.settings import Settings
from tide.wiring import connect, engine_service

EXIT_ON_PROMPT_HOOK = "TIDE_TEST_EXIT_ON_PROMPT"  # test hook, not a setting: exit when this prompt's turn comes
POISON_EXIT_STATUS = 70
NULL_BATCH = 1024  # requests a null engine finishes per step unless --max-num-seqs says otherwise
logger = logging.getLogger("tide.worker")


def add_parser(sub, settings: Settings) -> None:
    p = sub.add_parser("worker", help="serve a model: load it once and run shards from its queue")
    p.add_argument("--model", default=settings.model, help="model alias, HF directory or GGUF file")
    p.add_argument("--served-name", default=None, help="model name jobs use to reach this worker (default --model)")
    p.add_argument("--concurrency", type=int, default=settings.concurrency,
                   help="shards held at once, all feeding the one engine")
    p.add_argument("--max-num-seqs", type=int, default=settings.max_num_seqs)
    p.add_argument("--kv-cache-bytes", type=int, default=settings.kv_cache_bytes)
    p.add_argument("--threads", type=int, default=settings.threads,
                   help="torch compute threads (default: all cores; 1 is faster when other busy processes share them)")
    p.add_argument("--tensor-parallel-size", type=int, default=settings.tensor_parallel_size,
                   help="split the model over this many processes (one per GPU; on CPU, ranks share the cores); "
                        "this worker is rank 0 and spawns the others")
    p.add_argument("--offload-max-resident-layers", type=int, default=settings.offload_max_resident_layers,
                   help="keep decoder layers in host memory and stream them in, at most this many on the device")
    p.add_argument("--max-attempts", type=int, default=settings.max_attempts,
                   help="runs of one shard before its rows fail")
    p.add_argument("--task", choices=["auto", "generate", "embed"], default=settings.task,
                   help="what the engine serves: auto (embed for an encoder or sentence-transformers model, else "
                        "generate), or embed for a decoder model's pooled hidden states")
    p.add_argument("--loglevel", default=settings.log_level)
    p.add_argument("--engine", choices=["tide", "null"], default="tide",
                   help="null: no model, every request completes at once (to measure and test the control plane; "
                        "never a default or a setting, only this flag)")
    p.add_argument("--null-tokens", type=int, default=None, help="output tokens per request of --engine null (8)")
    add_engine_options(p, settings)
    add_redis_option(p, settings)
    p.set_defaults(handler=lambda args: run_worker(args, settings))


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    if args.null_tokens is not None and args.engine != "null":
        raise UsageError("--null-tokens is for --engine null, which must be asked for explicitly")
    from tide.jobs.leases.book import LeaseBook
    from tide.jobs.leases.keeper import LeaseKeeper
    from tide.jobs.leases.reaper import Reaper
    from tide.jobs.lifecycle import Finalizer
    from tide.jobs.shards.context import ShardContext
    from tide.jobs.specs import queue_for
    from tide.workers.collector import settle_after_startup
    from tide.workers.engine_service import BeforeSubmit
    from tide.workers.heap import bound_native_heap
    from tide.workers.registry import Heartbeat
    from tide.workers.tasks import register_tasks

    trimmer = bound_native_heap()
    storage = settings.storage_config()
    store, dispatcher = connect(args.redis_url)
    served = args.served_name or args.model
    name = f"{queue_for(served)}-{os.getpid()}@{socket.gethostname()}"
    # Load the engine before Celery starts: the threads pool runs every task in this process, so all shard tasks
    # share this one engine (and its batch); prefork would load one copy per child, solo would run one shard at
    # a time and leave nothing to refill the batch with.
    service = _null_service(args) if args.engine == "null" else engine_service(
        args.model, args.dtype, task=args.task, quantization=args.quantization, max_num_seqs=args.max_num_seqs,
        kv_cache_bytes=args.kv_cache_bytes, num_threads=args.threads, tensor_parallel_size=args.tensor_parallel_size,
        offload_max_resident_layers=args.offload_max_resident_layers, storage=storage, **speculative_config(args),
        **lora_config(args), **embedding_config(args))
    leases = LeaseBook(store.redis, settings.lease_ttl_s)
    keeper = LeaseKeeper(leases, settings.lease_renew_s).start()
    finalizer = Finalizer(store=store, storage=storage, price_per_worker_hour=settings.price_per_worker_hour)
    poison = os.environ.get(EXIT_ON_PROMPT_HOOK)
    context = ShardContext(store=store, dispatcher=dispatcher, storage=storage, worker=name,
                           service=BeforeSubmit(service, _exit_on(poison)) if poison else service,
                           max_attempts=args.max_attempts, leases=leases, keeper=keeper)
    register_tasks(dispatcher.app, context, finalizer)
    heartbeat = Heartbeat(store.redis, name, served, args.concurrency, service.figures).start()
    reaper = Reaper(store, dispatcher, leases, finalizer).start(settings.reaper_interval_s)
    settle_after_startup()
    try:
        dispatcher.app.worker_main(["worker", "--pool=threads", f"--concurrency={args.concurrency}",
                                    "-Q", queue_for(served), "-n", name, f"--loglevel={args.loglevel}",
                                    "--without-gossip", "--without-mingle"])
    finally:
        if trimmer is not None:
            trimmer.stop()
        reaper.stop()
        keeper.stop()
        heartbeat.stop()
        service.close()
        service.engine.close()  # stops tensor-parallel ranks, if any
    return 0


def _null_service(args: argparse.Namespace):
    from tide.engine.null_engine import NullEngine
    from tide.workers.engine_service import EngineService

    tokens = 8 if args.null_tokens is None else args.null_tokens
    try:
        engine = NullEngine(tokens, max_num_seqs=args.max_num_seqs or NULL_BATCH)
    except ValueError as exc:
        raise UsageError(f"--null-tokens: {exc}") from None
    logger.warning("NULL ENGINE: no model is loaded; every request on queue %s completes at once with %d output "
                   "tokens. For measuring and testing the control plane only.", args.served_name or args.model, tokens)
    return EngineService(engine, idle_wait_s=0.01)


def _exit_on(poison: str):
    """The poison-row fault test's hook: the worker process dies the moment a row with this prompt would enter its
    engine."""
    def hook(prompt) -> None:
        if prompt == poison:
            os._exit(POISON_EXIT_STATUS)
    return hook
