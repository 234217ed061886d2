"""`tide eval run SUITE`, `tide eval list`, `tide eval history SUITE`: eval suites from a suites file."""
from __future__ import annotations

import argparse
import json
import sys

from tide.options import UsageError, add_redis_option
from tide.settings import Settings, get_settings


def add_parser(sub, settings: Settings) -> None:
    p = sub.add_parser("eval", help="run eval suites and read their history")
    verbs = p.add_subparsers(dest="eval_command", required=True, metavar="VERB")
    run = verbs.add_parser("run", help="run one suite now: on the workers when Redis is configured, else here")
    run.add_argument("suite")
    _config(run, settings)
    run.add_argument("--json", action="store_true", help="print the run record as JSON (the last line)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="run in this process even when Redis is configured")
    where.add_argument("--queue", action="store_true", help="run on the workers (Redis from --redis-url)")
    run.add_argument("--dtype", default=settings.dtype, choices=["auto", "float32", "bfloat16", "float16"],
                     help="engine dtype when running in this process")
    run.add_argument("--timeout", type=float, default=None, help="give up waiting for the job after this long")
    add_redis_option(run, settings)
    run.set_defaults(handler=_guard(cmd_run))
    listing = verbs.add_parser("list", help="the suites of a suites file")
    _config(listing, settings)
    listing.set_defaults(handler=_guard(cmd_list))
    history = verbs.add_parser("history", help="a suite's score over time, with regressions per run")
    history.add_argument("suite")
    _config(history, settings)
    history.add_argument("--limit", type=int, default=20, help="the newest this many runs")
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=_guard(cmd_history))


def _config(p: argparse.ArgumentParser, settings: Settings) -> None:
    p.add_argument("--config", default=settings.evals_config, help="suites file (default $TIDE_EVALS_CONFIG)")


def _guard(handler):
    """Suite and scorer mistakes are the user's to fix: one line, status 2, like every other usage error."""
    def run(args: argparse.Namespace) -> int:
        from tide.jobs.evals.scorers import ScorerError
        from tide.jobs.evals.suites import SuiteError

        try:
            return handler(args)
        except (SuiteError, ScorerError) as exc:
            raise UsageError(str(exc)) from None
    return run


def _suites(args: argparse.Namespace):
    from tide.jobs.evals.suites import load_suites

    if not args.config:
        raise UsageError("no suites file: pass --config FILE or set TIDE_EVALS_CONFIG")
    return load_suites(args.config)


def lm_eval_harness(suites: dict) -> object | None:
    """What runs suites made of lm-eval tasks (`tide eval run`, `tide beat`); None when no suite has any."""
    if not any(suite.lm_eval is not None for suite in suites.values()):
        return None
    try:
        from tide.lmeval.suite import LmEvalHarness
    except ImportError as exc:  # the evals extra is not installed
        raise UsageError(str(exc)) from None
    return LmEvalHarness()


def _queued(args: argparse.Namespace) -> bool:
    if args.local or args.queue:
        return args.queue
    default = Settings.model_fields["redis_url"].default
    return args.redis_url != default or "redis_url" in get_settings().model_fields_set


def cmd_run(args: argparse.Namespace) -> int:
    from tide.jobs.evals.runner import check_suite
    from tide.jobs.evals.suites import get_suite
    from tide.jobs.webhooks.courier import Courier

    settings = get_settings()
    storage = settings.storage_config()
    suite = get_suite(_suites(args), args.suite)
    check_suite(suite, storage)
    webhooks = settings.webhook_config()
    if _queued(args):
        record = _run_queued(args, suite, webhooks, storage)
    else:
        from tide.jobs.evals.runner import EmbeddedExecutor, run_suite
        from tide.jobs.webhooks.outbox import MemoryOutbox
        from tide.wiring import engine_service

        service = engine_service(suite.model, args.dtype)
        outbox = MemoryOutbox()
        executor = EmbeddedExecutor(service, storage, settings.price_per_worker_hour,
                                    service.engine.tokenizer.chat_template)
        try:
            record = run_suite(args.suite, suite, executor, storage, outbox, harness=lm_eval_harness({"": suite}))
        finally:
            service.close()
        Courier(outbox, webhooks).drain()
    _print_record(record)
    if args.json:
        print(record.model_dump_json())
    return 0 if record.status == "passed" else 1


def _run_queued(args: argparse.Namespace, suite, webhooks, storage):
    from tide.jobs.evals.runner import QueuedExecutor, run_suite
    from tide.jobs.webhooks.courier import Courier
    from tide.jobs.webhooks.outbox import RedisOutbox
    from tide.wiring import chat_template_of, connect

    store, dispatcher = connect(args.redis_url)
    outbox = RedisOutbox(store.redis)
    executor = QueuedExecutor(store, dispatcher, storage, chat_template_of, args.timeout)
    record = run_suite(args.suite, suite, executor, storage, outbox, harness=lm_eval_harness({"": suite}))
    Courier(outbox, webhooks).pump()  # the first attempt now; `tide beat` makes any retries
    return record


def _print_record(record) -> None:
    out = sys.stderr
    print(f"{record.suite} {record.run_id}: {record.passed}/{record.n} passed, score {record.score:.3f} "
          f"({record.status})", file=out)
    if record.previous_run_id:
        print(f"  vs {record.previous_run_id} (score {record.previous_score:.3f}): "
              f"{len(record.regressions)} regressions, {len(record.improvements)} improvements", file=out)
    for item in record.regressions[:20]:
        print(f"  regressed: {item}", file=out)
    print(f"  results: {record.results}", file=out)


def cmd_list(args: argparse.Namespace) -> int:
    for name, suite in sorted(_suites(args).items()):
        schedule = f"{suite.schedule} {suite.timezone}" if suite.schedule else "manual"
        if suite.lm_eval is None:
            print(f"{name}\t{suite.model}\t{suite.scorer}\t{schedule}\t{suite.dataset}")
        else:
            print(f"{name}\t{suite.model}\tlm-eval\t{schedule}\t{','.join(suite.lm_eval.tasks)}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from tide.jobs.evals.history import History
    from tide.jobs.evals.suites import get_suite

    suite = get_suite(_suites(args), args.suite)
    runs = History(suite.history, args.suite, get_settings().storage_config()).index()[-args.limit:]
    if args.json:
        print(json.dumps(runs))
        return 0
    if not runs:
        print(f"{args.suite}: no runs yet in {suite.history}")
    for run in runs:
        when = run["scheduled_for"] or run["started_at"]
        print(f"{when}  {run['run_id']}  score {run['score']:.3f}  {run['passed']}/{run['n']}  "
              f"-{run['regressions']} +{run['improvements']}  {run['status']}")
    return 0
