"""`tide`: run a job in one process, or submit/follow/cancel queued jobs and run workers.

Expected failures (bad arguments, a bad spec, Redis or S3 unreachable, an unknown job) print one line on stderr and
exit with status 2; nothing prints a traceback unless something is actually broken.
"""
from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from tide.commands import COMMANDS
from tide.commands.bench import run_bench
from tide.commands.lm_eval import run_lm_eval
from tide.jobs.storage import StorageError
from tide.jobs.store import JobNotFound, StoreUnavailable
from tide.logs import configure_logging
from tide.options import UsageError
from tide.settings import Settings, get_settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark owns its own arguments
        return run_bench(argv[1:])
    if argv[:1] == ["lm-eval"]:  # so does lm-eval's command line
        try:
            return run_lm_eval(argv[1:])
        except UsageError as exc:
            return _fail(str(exc))
    try:
        settings = get_settings()
    except ValidationError as exc:
        return _fail(f"bad setting: {_validation_message(exc)}")
    args = build_parser(settings).parse_args(argv)
    redact = settings.redactor()
    configure_logging(args.command, settings.log_format, settings.log_level, args.verbose, redact)
    try:
        return args.handler(args)
    except ValidationError as exc:
        return _fail(redact(_validation_message(exc)))
    except (UsageError, StorageError, StoreUnavailable, JobNotFound, TimeoutError, FileNotFoundError) as exc:
        return _fail(redact(str(exc)))
    except KeyboardInterrupt:
        return 130


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())


def _fail(message: str) -> int:
    print(f"tide: error: {message}", file=sys.stderr)
    return 2


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tide", description="Batch LLM inference: run, queue and follow jobs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, settings)
    return parser
