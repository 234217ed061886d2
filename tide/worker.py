"""`tide worker`: load one engine, then serve shards from the model's Celery queue on a threads pool."""
from __future__ import annotations

import argparse
import os
import socket

from tide.settings import Settings
from tide.wiring import connect, engine_service


def add_parser(sub, settings: Settings) -> None:
    from tide.cli import add_redis_option

    p = sub.add_parser("worker", help="serve a model: load it once and run shards from its queue")
    p.add_argument("--model", default=settings.model, help="model alias, HF directory or GGUF file")
    p.add_argument("--served-name", default=None, help="model name jobs use to reach this worker (default --model)")
    p.add_argument("--concurrency", type=int, default=settings.concurrency,
                   help="shards held at once, all feeding the one engine")
    p.add_argument("--dtype", default=settings.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-num-seqs", type=int, default=settings.max_num_seqs)
    p.add_argument("--kv-cache-bytes", type=int, default=settings.kv_cache_bytes)
    p.add_argument("--threads", type=int, default=settings.threads,
                   help="torch compute threads (default: all cores; 1 is faster when other busy processes share them)")
    p.add_argument("--max-attempts", type=int, default=settings.max_attempts,
                   help="runs of one shard before its rows fail")
    p.add_argument("--loglevel", default=settings.log_level)
    add_redis_option(p, settings)
    p.set_defaults(handler=lambda args: run_worker(args, settings))


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.lifecycle import Finalizer
    from jobs.shard_runner import ShardContext
    from jobs.specs import queue_for
    from workers.registry import Heartbeat
    from workers.tasks import register_tasks

    store, dispatcher = connect(args.redis_url)
    served = args.served_name or args.model
    name = f"{queue_for(served)}-{os.getpid()}@{socket.gethostname()}"
    # Load the engine before Celery starts: the threads pool runs every task in this process, so all shard tasks
    # share this one engine (and its batch); prefork would load one copy per child, solo would run one shard at
    # a time and leave nothing to refill the batch with.
    service = engine_service(args.model, args.dtype, max_num_seqs=args.max_num_seqs,
                             kv_cache_bytes=args.kv_cache_bytes, num_threads=args.threads)
    context = ShardContext(store=store, dispatcher=dispatcher, service=service, worker=name,
                           max_attempts=args.max_attempts)
    register_tasks(dispatcher.app, context, Finalizer(store=store, webhook_secret=settings.webhook_secret))
    heartbeat = Heartbeat(store.redis, name, served, args.concurrency, service.figures).start()
    try:
        dispatcher.app.worker_main(["worker", "--pool=threads", f"--concurrency={args.concurrency}",
                                    "-Q", queue_for(served), "-n", name, f"--loglevel={args.loglevel}",
                                    "--without-gossip", "--without-mingle"])
    finally:
        heartbeat.stop()
        service.close()
    return 0
