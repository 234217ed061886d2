"""`tide beat`: the scheduler process. Fires eval suites on their cron schedules (one leader at a time, one run per
suite and slot) and delivers webhooks from the Redis outbox on their retry schedule."""
from __future__ import annotations

import argparse
import logging
import signal
import threading

from tide.options import UsageError, add_redis_option
from tide.settings import Settings, get_settings

READY_LINE = "tide beat: ready"


def add_parser(sub, settings: Settings) -> None:
    p = sub.add_parser("beat", help="run eval suites on their schedules and deliver webhooks (run one or more; "
                       "one leads)")
    p.add_argument("--config", default=settings.evals_config,
                   help="suites file (default $TIDE_EVALS_CONFIG; without one, only webhooks are delivered)")
    p.add_argument("--grace", type=float, default=settings.beat_grace_s,
                   help="run a slot missed by at most this many seconds once on start")
    p.add_argument("--tick", type=float, default=1.0, help="seconds between schedule checks")
    p.add_argument("--lock-ttl", type=float, default=15.0, help="seconds a dead leader keeps the lock")
    p.add_argument("--timeout", type=float, default=None, help="give up waiting for one eval job after this long")
    add_redis_option(p, settings)
    p.set_defaults(handler=cmd_beat)


def cmd_beat(args: argparse.Namespace) -> int:
    from tide.commands.evals import lm_eval_harness
    from tide.jobs.evals.runner import QueuedExecutor
    from tide.jobs.evals.scorers import ScorerError, get_scorer
    from tide.jobs.evals.suites import SuiteError, load_suites
    from tide.jobs.leases.book import LeaseBook
    from tide.jobs.leases.reaper import Reaper
    from tide.jobs.lifecycle import Finalizer
    from tide.jobs.webhooks.courier import Courier
    from tide.jobs.webhooks.outbox import RedisOutbox
    from tide.wiring import chat_template_of, connect
    from tide.workers.eval_cron import EvalCron

    settings = get_settings()
    storage = settings.storage_config()
    logging.getLogger().setLevel(settings.log_level.upper())
    try:
        suites = load_suites(args.config) if args.config else {}
        for suite in suites.values():
            if suite.lm_eval is None:
                get_scorer(suite.scorer)
    except (SuiteError, ScorerError) as exc:
        raise UsageError(str(exc)) from None
    harness = lm_eval_harness(suites)
    store, dispatcher = connect(args.redis_url)
    outbox = RedisOutbox(store.redis)
    scheduler = EvalCron({n: s for n, s in suites.items() if s.schedule}, store.redis,
                         QueuedExecutor(store, dispatcher, storage, chat_template_of, args.timeout), storage, outbox,
                         Courier(outbox, settings.webhook_config()), grace_s=args.grace, tick_s=args.tick,
                         lock_ttl_s=args.lock_ttl, harness=harness)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    finalizer = Finalizer(store=store, storage=storage, price_per_worker_hour=settings.price_per_worker_hour)
    reaper = Reaper(store, dispatcher, LeaseBook(store.redis, settings.lease_ttl_s), finalizer).start(
        settings.reaper_interval_s)
    print(f"{READY_LINE} ({len(scheduler.suites)} scheduled suites)", flush=True)
    try:
        scheduler.run(stop)
    finally:
        reaper.stop()
    return 0
