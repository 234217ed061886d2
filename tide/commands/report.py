"""`tide report JOB`: write a job's report.html (beside its summary.json) from the summary, and print or open it.

JOB is a job id (looked up in Redis), or a local results directory / summary.json (`tide run` jobs have no Redis).
"""
from __future__ import annotations

import argparse
import json
import os
import webbrowser

from tide.options import UsageError, add_redis_option
from tide.settings import Settings


def add_parser(sub, settings: Settings) -> None:
    p = sub.add_parser("report", help="write a job's report.html (plots, latency, workers, cost) and print its path")
    p.add_argument("job", help="job id, or a local results directory or summary.json")
    p.add_argument("--open", action="store_true", help="open the report in a browser (local reports)")
    add_redis_option(p, settings)
    p.set_defaults(handler=lambda args: cmd_report(args, settings))


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from tide.jobs.report.html import write_report
    from tide.jobs.storage import resolve

    storage = settings.storage_config()
    summary_uri = _summary_uri(args.job, args.redis_url)
    summary_location = resolve(summary_uri, storage)
    summary = json.loads(summary_location.read_bytes())
    prefix = resolve(summary_uri.rsplit("/", 1)[0], storage)
    report = write_report(prefix, summary)
    print(report.uri)
    if args.open:
        if report.uri.startswith("s3://"):
            raise UsageError("the report is on S3: download it to open it")
        webbrowser.open("file://" + os.path.abspath(report.uri))
    return 0


def _summary_uri(job: str, redis_url: str) -> str:
    if os.path.isdir(job):
        job = os.path.join(job, "summary.json")
    if os.path.isfile(job):
        return os.path.abspath(job)
    from tide.jobs.store import RedisJobStore

    found = RedisJobStore.from_url(redis_url).get_job(job)
    if found.summary_uri is None:
        raise UsageError(f"job {found.id} is {found.status.value}: it has no summary yet")
    return found.summary_uri
