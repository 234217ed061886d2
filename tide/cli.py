"""`tide`: run a job in one process, or submit/follow/cancel queued jobs and run workers.

Expected failures (bad arguments, a bad spec, Redis or S3 unreachable, an unknown job) print one line on stderr and
exit with status 2; nothing prints a traceback unless something is actually broken.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pydantic import ValidationError

from tide.jobs.specs import ColumnMap, JobSpec
from tide.jobs.storage import StorageError
from tide.jobs.store import JobNotFound, StoreUnavailable
from tide.logs import configure_logging
from tide.settings import Settings, get_settings
from tide.speculative_options import add_speculative_options, speculative_config
from tide.wiring import UsageError, connect, engine_service


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the engine's benchmark owns its own arguments
        from tide.engine.bench import main as bench_main

        return bench_main(argv[1:])
    try:
        settings = get_settings()
    except ValidationError as exc:
        return _fail(f"bad setting: {_validation_message(exc)}")
    args = build_parser(settings).parse_args(argv)
    # Finalizers (workers, `tide run`) price a job from the environment: hand them the .env value too.
    os.environ.setdefault("TIDE_PRICE_PER_WORKER_HOUR", str(settings.price_per_worker_hour))
    configure_logging(args.command, settings.log_format, settings.log_level, args.verbose)
    try:
        return args.handler(args)
    except ValidationError as exc:
        return _fail(_validation_message(exc))
    except (UsageError, StorageError, StoreUnavailable, JobNotFound, TimeoutError, FileNotFoundError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())


def _fail(message: str) -> int:
    print(f"tide: error: {message}", file=sys.stderr)
    return 2


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    from tide import api_command, beat, evals_command, report_command, stack, tune, webhooks_command, worker

    parser = argparse.ArgumentParser(prog="tide", description="Batch LLM inference: run, queue and follow jobs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub, settings)
    _add_submit(sub, settings)
    for name, handler, text in (("status", cmd_status, "show a job's status and counts"),
                                ("cancel", cmd_cancel, "cancel a job, keeping finished results")):
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
    p.set_defaults(handler=cmd_results)
    worker.add_parser(sub, settings)
    api_command.add_parser(sub, settings)
    stack.add_parser(sub, settings)
    evals_command.add_parser(sub, settings)
    beat.add_parser(sub, settings)
    webhooks_command.add_parser(sub, settings)
    report_command.add_parser(sub, settings)
    tune.add_parser(sub, settings)
    sub.add_parser("bench", help="benchmark the engine (see `tide bench --help`)")
    return parser


def add_redis_option(p: argparse.ArgumentParser, settings: Settings) -> None:
    p.add_argument("--redis-url", default=settings.redis_url,
                   help=f"job store and broker (default $TIDE_REDIS_URL or {settings.redis_url})")


def _add_job_options(p: argparse.ArgumentParser, settings: Settings, max_tokens: int | None) -> None:
    p.add_argument("input", help="JSONL or Parquet file: local path or s3://bucket/key")
    p.add_argument("--model", default=settings.model, help="model alias, HF directory or GGUF file")
    p.add_argument("--format", choices=["auto", "jsonl", "parquet"], default="auto")
    p.add_argument("--max-tokens", type=int, default=max_tokens, help="default max tokens per row")
    p.add_argument("--temperature", type=float, default=None, help="default sampling temperature")
    p.add_argument("--sampling", type=_json_object, default={}, help="more sampling defaults as a JSON object")
    p.add_argument("--shard-rows", type=int, default=settings.shard_rows, help="rows per shard")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--messages-column", default="messages")
    p.add_argument("--id-column", default="id")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"top_p\": 0.9}'")
    return value


def _add_run(sub, settings: Settings) -> None:
    p = sub.add_parser("run", help="run a prompt file through the whole pipeline in this process")
    _add_job_options(p, settings, max_tokens=64)
    p.add_argument("--output", default="tide-output", help="local results directory (default ./tide-output)")
    p.add_argument("--dtype", default=settings.dtype, choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--quantization", default=settings.quantization, choices=["none", "int8"],
                   help="int8: decoder projections as int8 weights with per-output-channel scales")
    p.add_argument("--shards-in-flight", type=int, default=2, help="shards sharing the engine at once")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--webhook", default=None, help="URL to POST the signed job event to when it ends")
    add_speculative_options(p, settings)
    p.set_defaults(handler=lambda args: cmd_run(args, settings))


def _add_submit(sub, settings: Settings) -> None:
    p = sub.add_parser("submit", help="queue a job for the workers and print its id")
    _add_job_options(p, settings, max_tokens=None)
    p.add_argument("--output", required=True, help="results prefix: local directory or s3://bucket/prefix")
    p.add_argument("--priority", type=int, default=0, help="0-9, higher runs first")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--webhook", default=None, help="URL to POST the signed job on completion")
    p.add_argument("--completion-window", default="24h")
    p.add_argument("--idempotency-key", default=None)
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    add_redis_option(p, settings)
    p.set_defaults(handler=cmd_submit)


def spec_from_args(args: argparse.Namespace, output: str, **extra) -> JobSpec:
    sampling = dict(args.sampling)
    if args.max_tokens is not None:
        sampling["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        sampling["temperature"] = args.temperature
    columns = ColumnMap(prompt=args.prompt_column, messages=args.messages_column, id=args.id_column)
    return JobSpec(input=args.input, format=args.format, model=args.model, sampling=sampling, columns=columns,
                   output=output, shard_rows=args.shard_rows, **extra)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from tide.jobs.embedded import run_embedded
    from tide.jobs.storage import resolve
    from tide.jobs.summary import format_report
    from tide.webhooks_command import webhook_config

    if not os.path.exists(args.input) and not args.input.startswith("s3://"):
        raise UsageError(f"input file {args.input!r} does not exist")
    defaults = {"temperature": 0.7, "top_p": 0.9, "seed": 0}
    args.sampling = {**defaults, **args.sampling}
    spec = spec_from_args(args, os.path.abspath(args.output), webhook_url=args.webhook)
    service = engine_service(spec.model, args.dtype, quantization=args.quantization,
                             **speculative_config(args))
    try:
        job = run_embedded(spec, service, args.shards_in_flight, show_progress=not args.no_progress,
                           webhooks=webhook_config(settings))
    finally:
        service.close()
    if job.summary_uri is None:
        raise UsageError(f"job {job.status.value}: {job.error}")
    print(format_report(json.loads(resolve(job.summary_uri).read_bytes())))
    print(f"results: {job.output_prefix}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from tide.jobs.lifecycle import submit_job

    metadata = dict(_key_value(item) for item in args.metadata)
    spec = spec_from_args(args, args.output, priority=args.priority, metadata=metadata, webhook_url=args.webhook,
                          completion_window=args.completion_window, idempotency_key=args.idempotency_key)
    store, dispatcher = connect(args.redis_url)
    job = submit_job(spec, store, dispatcher)
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


def cmd_cancel(args: argparse.Namespace) -> int:
    from tide.jobs.lifecycle import cancel_job

    store, dispatcher = connect(args.redis_url)
    job = cancel_job(store, dispatcher, args.job_id)
    print(f"{job.id} {job.status.value}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from tide.jobs.results import iter_output_rows
    from tide.jobs.store import RedisJobStore

    job = RedisJobStore.from_url(args.redis_url).get_job(args.job_id)
    for i, row in enumerate(iter_output_rows(job.output_prefix, errors=args.errors)):
        if args.limit is not None and i >= args.limit:
            break
        print(json.dumps(row, ensure_ascii=False))
    return 0
