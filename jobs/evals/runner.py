"""One eval run: the suite's items as a normal job, each output scored, the record and results written to the
history with the diff against the previous run, and an `eval.completed` / `eval.regressed` webhook queued."""
from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Protocol

from tide.jobs.engine_client import EngineClient
from tide.jobs.evals.dataset import Item, read_items
from tide.jobs.evals.history import History, ResultRow, RunRecord, diff
from tide.jobs.evals.scorers import ScorerError, apply, get_scorer
from tide.jobs.evals.suites import Suite, SuiteError
from tide.jobs.results import iter_output_rows
from tide.jobs.specs import JobSpec
from tide.jobs.state import Job, JobStatus
from tide.jobs.storage import Location, StorageConfig, StorageError, resolve
from tide.jobs.webhooks.courier import WebhookConfig, enqueue
from tide.jobs.webhooks.events import EVAL_COMPLETED, EVAL_REGRESSED
from tide.jobs.webhooks.outbox import Outbox

logger = logging.getLogger("tide.evals")


class Executor(Protocol):
    """Where a run's job goes: in this process (`tide run`'s pipeline) or to the workers."""

    def execute(self, spec: JobSpec) -> Job: ...
    def chat_template(self, model: str) -> str | None: ...


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def engine_version() -> str:
    try:
        return f"tide {metadata.version('tide')}"
    except metadata.PackageNotFoundError:
        return "tide (not installed)"


def template_hash(template: str | None) -> str | None:
    return None if template is None else "sha256:" + hashlib.sha256(template.encode()).hexdigest()


def new_run_id(suite: str, now: float) -> str:
    return f"{suite}-{datetime.fromtimestamp(now, timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def check_suite(suite: Suite, storage: StorageConfig) -> None:
    """Raise ScorerError/StorageError for what the user must fix before a run is worth starting."""
    if suite.lm_eval is None:
        get_scorer(suite.scorer)
        _dataset(suite, storage)


@dataclass
class Scored:
    """What a run's items came to: a result row each, the job that computed them (the last, when several did), and
    what lm-eval adds to the record (its task metrics)."""

    rows: list[ResultRow]
    job_id: str | None
    job_status: str
    lm_eval: dict[str, Any] | None = None


class Harness(Protocol):
    """Scores a suite of lm-eval tasks through the executor's jobs (tide/lmeval/suite.py: lm-eval sits above jobs/)."""

    def score(self, name: str, suite: Suite, executor: Executor, storage: StorageConfig,
              run_dir: Location) -> Scored: ...


def run_suite(name: str, suite: Suite, executor: Executor, storage: StorageConfig, outbox: Outbox | None = None,
              scheduled_for: float | None = None, run_id: str | None = None, clock=time.time,
              harness: Harness | None = None) -> RunRecord:
    """Run `suite` now; raises ScorerError/StorageError/SuiteError for what the user must fix before any run."""
    started = clock()
    run_id = run_id or new_run_id(name, started)
    history = History(suite.history, name, storage)
    previous = history.latest()
    run_dir = history.run_dir(run_id)
    if suite.lm_eval is None:
        scored = _score_items(name, suite, run_id, executor, storage, run_dir)
    elif harness is None:
        raise SuiteError(f"suite {name!r} names lm-eval tasks, and this process has no lm-eval: install Tide's "
                         f"evals extra (pip install 'tide[evals]')")
    else:
        scored = harness.score(name, suite, executor, storage, run_dir)
    rows = scored.rows
    regressions, improvements = diff(history.results(previous.run_id), rows) if previous else ([], [])
    n, passed = len(rows), sum(row.passed for row in rows)
    score = sum(row.score for row in rows) / n if n else 0.0
    below = suite.min_score is not None and score < suite.min_score
    too_many = suite.max_regressions is not None and len(regressions) > suite.max_regressions
    record = RunRecord(
        run_id=run_id, suite=name, scheduled_for=None if scheduled_for is None else iso(scheduled_for),
        started_at=iso(started), finished_at=iso(clock()), model=suite.model, engine_version=engine_version(),
        chat_template_hash=template_hash(executor.chat_template(suite.model)),
        sampling={} if suite.lm_eval else suite.sampling, scorer="lm-eval" if suite.lm_eval else suite.scorer,
        dataset=suite.dataset or "lm-eval: " + ", ".join(suite.lm_eval.tasks), job_id=scored.job_id,
        job_status=scored.job_status, n=n, passed=passed,
        errors=sum(row.error is not None for row in rows), score=round(score, 6),
        previous_run_id=previous.run_id if previous else None,
        previous_score=previous.score if previous else None, regressions=regressions, improvements=improvements,
        min_score=suite.min_score, max_regressions=suite.max_regressions,
        status="failed_threshold" if below or too_many else "passed", results=run_dir.child("results.parquet").uri,
        lm_eval=scored.lm_eval)
    history.write(record, rows)
    logger.info("eval %s run %s: %d/%d passed, score %.3f, %d regressions, %s", name, run_id, passed, n, score,
                len(regressions), record.status)
    if suite.webhook and outbox is not None:
        enqueue(outbox, run_id, suite.webhook, EVAL_REGRESSED if record.status == "failed_threshold"
                else EVAL_COMPLETED, _event_data(record), clock())
    return record


def _score_items(name: str, suite: Suite, run_id: str, executor: Executor, storage: StorageConfig,
                 run_dir: Location) -> Scored:
    """The dataset's items as one job, each output scored by the suite's scorer."""
    scorer = get_scorer(suite.scorer)  # an unknown scorer stops the run before the job
    items = read_items(_dataset(suite, storage))
    good = [item for item in items if item.error is None]
    job = None
    outputs: dict[str, str] = {}
    failures: dict[str, str] = {}
    if good:
        run_dir.child("input.jsonl").write_bytes(
            "".join(json.dumps(item.job_row(), ensure_ascii=False) + "\n" for item in good).encode())
        spec = JobSpec(input=run_dir.child("input.jsonl").uri, format="jsonl", model=suite.model,
                       sampling=suite.sampling, output=run_dir.child("job").uri,
                       metadata={"eval_suite": name, "eval_run": run_id}, idempotency_key=f"eval:{run_id}")
        job = executor.execute(spec)
        outputs, failures = _job_outputs(job, storage)
    rows = [_score(item, scorer, suite.scorer, outputs, failures, job) for item in items]
    return Scored(rows, job.id if job else None, job.status.value if job else "no_items")


def _dataset(suite: Suite, storage: StorageConfig) -> Location:
    location = resolve(suite.dataset, storage)
    if not location.exists():
        raise StorageError(f"eval dataset {suite.dataset!r} does not exist")
    return location


def _job_outputs(job: Job, storage: StorageConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(text by item id, error message by item id) from the job's committed parts."""
    outputs, failures = {}, {}
    if job.status in (JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.EXPIRED):
        prefix = resolve(job.output_prefix, storage)
        for row in iter_output_rows(prefix):
            if row.get("sample_index", 0) == 0:
                outputs[row["custom_id"]] = row["text"]
        for row in iter_output_rows(prefix, errors=True):
            if row.get("custom_id"):
                failures[row["custom_id"]] = f"{row['code']}: {row['message']}"
    return outputs, failures


def _score(item: Item, scorer, scorer_name: str, outputs: dict[str, str], failures: dict[str, str],
           job: Job | None) -> ResultRow:
    expected = None if item.expected is None else (
        item.expected if isinstance(item.expected, str) else json.dumps(item.expected, ensure_ascii=False))
    if item.error is not None:
        return ResultRow(id=item.id, output=None, expected=expected, passed=False, score=0.0, error=item.error)
    if item.id not in outputs:
        reason = failures.get(item.id) or (f"job {job.status.value}: {job.error}" if job and job.error
                                           else "no output for this item")
        return ResultRow(id=item.id, output=None, expected=expected, passed=False, score=0.0, error=reason)
    output = outputs[item.id]
    if item.expected is None and scorer_name != "json_valid":
        return ResultRow(id=item.id, output=output, expected=None, passed=False, score=0.0,
                         error="item has no `expected` value")
    try:
        result = apply(scorer, output, item.expected)
    except ScorerError as exc:
        return ResultRow(id=item.id, output=output, expected=expected, passed=False, score=0.0, error=str(exc))
    return ResultRow(id=item.id, output=output, expected=expected, passed=result.passed, score=result.score)


def _event_data(record: RunRecord) -> dict[str, Any]:
    return {"id": record.run_id, "suite": record.suite, "status": record.status, "n": record.n,
            "passed": record.passed, "score": record.score, "regressions": len(record.regressions),
            "improvements": len(record.improvements)}


class EmbeddedExecutor:
    """Runs the job in this process around one engine (no Redis, no S3 needed)."""

    def __init__(self, service: EngineClient, storage: StorageConfig, price_per_worker_hour: float,
                 template: str | None, show_progress: bool = False) -> None:
        self.service, self.storage, self.price_per_worker_hour = service, storage, price_per_worker_hour
        self.template = template  # the chat template of the engine's tokenizer
        self.show_progress = show_progress

    def execute(self, spec: JobSpec) -> Job:
        from tide.jobs.embedded import run_embedded

        # An eval's job carries no webhook of its own (the run's event goes through run_suite's outbox).
        return run_embedded(spec, self.service, storage=self.storage, webhooks=WebhookConfig(),
                            price_per_worker_hour=self.price_per_worker_hour, show_progress=self.show_progress)

    def chat_template(self, model: str) -> str | None:
        return self.template


class QueuedExecutor:
    """Submits the job to the workers through Redis and waits for it to end; `templates` says which chat template
    a model name has as this machine resolves it (None when only the workers know the name)."""

    def __init__(self, store, dispatcher, storage: StorageConfig, templates: Callable[[str], str | None],
                 timeout_s: float | None = None, poll_s: float = 1.0, show_progress: bool = False) -> None:
        self.store, self.dispatcher, self.storage, self.templates = store, dispatcher, storage, templates
        self.timeout_s, self.poll_s, self.show_progress = timeout_s, poll_s, show_progress

    def execute(self, spec: JobSpec) -> Job:
        from tide.jobs.lifecycle import submit_job
        from tide.jobs.progress import wait_for_job

        job = submit_job(spec, self.store, self.dispatcher, self.storage)
        if job.status.terminal:
            return job
        return wait_for_job(self.store, job.id, poll_s=self.poll_s, show=self.show_progress, timeout_s=self.timeout_s)

    def chat_template(self, model: str) -> str | None:
        return self.templates(model)
