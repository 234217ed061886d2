"""`tide run FILE`: a prompt file through the whole pipeline (plan, shards, engine, Parquet, report) in this process.

The model and the task default to what the file's first batch line names (its `body.model`, its url), else to the
configured model and what it serves, so a file of `/v1/embeddings` lines runs as it is."""
from __future__ import annotations

import argparse
import json
import os

from tide.options import (
    UsageError,
    add_engine_options,
    add_job_options,
    embedding_config,
    lora_config,
    spec_from_args,
    speculative_config,
)
from tide.settings import Settings
from tide.wiring import engine_service


def add_parser(sub, settings: Settings) -> None:
    p = sub.add_parser("run", help="run a prompt file through the whole pipeline in this process")
    add_job_options(p, settings, max_tokens=64)
    p.add_argument("--output", default="tide-output", help="local results directory (default ./tide-output)")
    p.add_argument("--shards-in-flight", type=int, default=2, help="shards sharing the engine at once")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--webhook", default=None, help="URL to POST the signed job event to when it ends")
    add_engine_options(p, settings)
    p.set_defaults(handler=lambda args: cmd_run(args, settings))


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from tide.jobs.embedded import run_embedded
    from tide.jobs.inputs import input_hints
    from tide.jobs.storage import resolve
    from tide.jobs.summary import format_report
    from tide.workers.heap import bound_native_heap

    if not os.path.exists(args.input) and not args.input.startswith("s3://"):
        raise UsageError(f"input file {args.input!r} does not exist")
    trimmer = bound_native_heap()  # a long job is a long-running process too
    storage = settings.storage_config()
    hints = input_hints(resolve(args.input, storage))
    model = args.model or hints.model or settings.model
    service = engine_service(model, args.dtype, task=args.task, storage=storage, quantization=args.quantization,
                             **speculative_config(args), **lora_config(args), **embedding_config(args))
    task = args.task if args.task != "auto" else hints.task or service.engine.task
    if task == "generate":
        args.sampling = {"temperature": 0.7, "top_p": 0.9, "seed": 0, **args.sampling}
    try:
        spec = spec_from_args(args, os.path.abspath(args.output), model, task, webhook_url=args.webhook)
        job = run_embedded(spec, service, storage=storage, webhooks=settings.webhook_config(),
                           price_per_worker_hour=settings.price_per_worker_hour,
                           shards_in_flight=args.shards_in_flight, show_progress=not args.no_progress)
    finally:
        if trimmer is not None:
            trimmer.stop()
        service.close()
    if job.summary_uri is None:
        raise UsageError(f"job {job.status.value}: {job.error}")
    print(format_report(json.loads(resolve(job.summary_uri, storage).read_bytes())))
    print(f"results: {job.output_prefix}")
    return 0
