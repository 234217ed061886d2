"""Queued jobs: `tide submit`, `tide status`, `tide wait`, `tide cancel` and `tide results`."""
from __future__ import annotations

import argparse
import json
import sys

from tide.options import UsageError, add_job_options, add_redis_option, spec_from_args
from tide.settings import Settings
from tide.wiring import connect


def add_parser(sub, settings: Settings) -> None:
    _add_submit(sub, settings)
    for name, handler, text in (("status", cmd_status, "show a job's status and counts"),
                                ("cancel", lambda args: cmd_cancel(args, settings),
                                 "cancel a job, keeping finished results")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id")
        add_redis_option(p, settings)
        p.set_defaults(handler=handler)
    p = sub.add_parser("wait", help="follow a job with a progress bar until it ends")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    add_redis_option(p, settings)
    p.set_defaults(handler=cmd_wait)
    p = sub.add_parser("results", help="print a finished job's results (or errors) as JSON lines")
    p.add_argument("job_id")
    p.add_argument("--errors", action="store_true", help="print the error rows instead")
    p.add_argument("--limit", type=int, default=None)
    add_redis_option(p, settings)
    p.set_defaults(handler=lambda args: cmd_results(args, settings))


def _add_submit(sub, settings: Settings) -> None:
    p = sub.add_parser("submit", help="queue a job for the workers and print its id")
    add_job_options(p, settings, max_tokens=None)
    p.add_argument("--output", required=True, help="results prefix: local directory or s3://bucket/prefix")
    p.add_argument("--priority", type=int, default=0, help="0-9, higher runs first")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--webhook", default=None, help="URL to POST the signed job on completion")
    p.add_argument("--completion-window", default="24h")
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    add_redis_option(p, settings)
    p.set_defaults(handler=lambda args: cmd_submit(args, settings))


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from tide.jobs.inputs import input_hints
    from tide.jobs.lifecycle import submit_job
    from tide.jobs.storage import resolve

    metadata = dict(_key_value(item) for item in args.metadata)
    storage = settings.storage_config()
    hints = input_hints(resolve(args.input, storage))  # the workers know what a model serves; the file may say
    task = args.task if args.task != "auto" else hints.task or "generate"
    spec = spec_from_args(args, args.output, args.model or hints.model or settings.model, task,
                          priority=args.priority, metadata=metadata, webhook_url=args.webhook,
                          completion_window=args.completion_window, idempotency_key=args.idempotency_key)
    store, dispatcher = connect(args.redis_url)
    job = submit_job(spec, store, dispatcher, storage)
    if job.error:
        raise UsageError(f"job {job.id} failed: {job.error}")
    print(job.id)
    for error in job.sample_errors:
        print(f"  invalid row: {error.message}", file=sys.stderr)
    if args.wait:
        return _wait(store, job.id, None)
    return 0


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--metadata wants KEY=VALUE, got {item!r}")
    return key, value


def cmd_status(args: argparse.Namespace) -> int:
    from tide.jobs.lifecycle import job_status
    from tide.jobs.store import RedisJobStore

    print(job_status(RedisJobStore.from_url(args.redis_url), args.job_id).model_dump_json(indent=2))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    from tide.jobs.store import RedisJobStore

    return _wait(RedisJobStore.from_url(args.redis_url), args.job_id, args.timeout)


def _wait(store, job_id: str, timeout: float | None) -> int:
    from tide.jobs.progress import wait_for_job
    from tide.jobs.state import JobStatus

    job = wait_for_job(store, job_id, timeout_s=timeout, show=sys.stderr.isatty())
    counts = job.request_counts
    print(f"{job.id} {job.status.value}: {counts.completed} completed, {counts.failed} failed of {counts.total}; "
          f"summary {job.summary_uri}")
    return 0 if job.status == JobStatus.COMPLETED else 1


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from tide.jobs.lifecycle import Finalizer, cancel_job

    store, dispatcher = connect(args.redis_url)
    finalizer = Finalizer(store=store, storage=settings.storage_config(),
                          price_per_worker_hour=settings.price_per_worker_hour)
    job = cancel_job(store, dispatcher, args.job_id, finalizer=finalizer)  # ends it here if no worker planned it
    print(f"{job.id} {job.status.value}")
    return 0


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    from tide.jobs.results import iter_job_rows
    from tide.jobs.storage import resolve
    from tide.jobs.store import RedisJobStore

    store = RedisJobStore.from_url(args.redis_url)
    job = store.get_job(args.job_id)
    prefix = resolve(job.output_prefix, settings.storage_config())
    for i, row in enumerate(iter_job_rows(store, job, prefix, args.errors)):
        if args.limit is not None and i >= args.limit:
            break
        print(json.dumps(row, ensure_ascii=False))
    return 0
