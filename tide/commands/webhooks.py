"""`tide webhooks JOB` (a job's delivery log) and `tide webhooks replay JOB` (send its events again)."""
from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from tide.options import UsageError, add_redis_option
from tide.settings import Settings, get_settings


def add_parser(sub, settings: Settings) -> None:
    p = sub.add_parser("webhooks", help="show a job's webhook delivery log, or `replay JOB` to send it again",
                       usage="tide webhooks [replay] JOB")
    p.add_argument("words", nargs="+", metavar="JOB", help="a job or eval run id, after `replay` to resend")
    add_redis_option(p, settings)
    p.set_defaults(handler=cmd_webhooks)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from tide.jobs.store import RedisJobStore
    from tide.jobs.webhooks.outbox import RedisOutbox

    if len(args.words) == 2 and args.words[0] == "replay":
        return _replay(args.words[1], RedisOutbox(RedisJobStore.from_url(args.redis_url).redis))
    if len(args.words) != 1:
        raise UsageError("usage: tide webhooks JOB | tide webhooks replay JOB")
    owner = args.words[0]
    outbox = RedisOutbox(RedisJobStore.from_url(args.redis_url).redis)
    deliveries = outbox.deliveries(owner)
    if not deliveries:
        raise UsageError(f"no webhook events for {owner!r} (no webhook URL, or not finished yet)")
    for d in deliveries:
        due = f", next attempt {_when(d.next_at)}" if d.state.value == "pending" else ""
        print(f"{d.id} {d.type}: {d.state.value} after {d.attempts} attempt(s){due}")
    for e in outbox.log(owner):
        answer = f"HTTP {e.status_code}" if e.status_code is not None else (e.error or "")
        print(f"  {_when(e.at)}  {e.webhook_id}  attempt {e.attempt}  {answer}  {e.outcome}")
    return 0


def _replay(owner: str, outbox) -> int:
    from tide.jobs.webhooks.courier import Courier, replay

    again = replay(outbox, owner, time.time())
    if not again:
        raise UsageError(f"no webhook events for {owner!r} to replay")
    Courier(outbox, get_settings().webhook_config()).pump()  # the first attempt now; retries come from `tide beat`
    for d in again:
        print(f"{d.id} {d.type}: {outbox.get(d.id).state.value}")
    return 0


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
