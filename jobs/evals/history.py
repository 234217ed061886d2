"""A suite's run history, under its `history` location (local directory or s3:// prefix):

    {history}/{suite}/index.json                  every finished run's summary, oldest first
    {history}/{suite}/summaries/{run_id}.json     one run's summary (what index.json is rebuilt from)
    {history}/{suite}/runs/{run_id}/run.json      the run record
    {history}/{suite}/runs/{run_id}/results.parquet   one row per item: id, output, expected, passed, score, error
    {history}/{suite}/runs/{run_id}/input.jsonl, job/  the job's input and its results, as for any job
"""
from __future__ import annotations

import io
import json
import threading
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from tide.jobs.storage import Location, StorageConfig, resolve

# Runs of one process end together (the scheduler runs several at once) and each rewrites index.json.
_INDEX_LOCK = threading.Lock()

RESULTS_SCHEMA = pa.schema([("id", pa.string()), ("output", pa.string()), ("expected", pa.string()),
                            ("passed", pa.bool_()), ("score", pa.float64()), ("error", pa.string())])


class RunRecord(BaseModel):
    """run.json: what ran (enough to reproduce it), how it scored, and how it differs from the previous run."""

    run_id: str
    suite: str
    scheduled_for: str | None = Field(None, description="the cron slot (UTC, ISO 8601); None for a manual run")
    started_at: str
    finished_at: str
    model: str
    engine_version: str
    chat_template_hash: str | None
    sampling: dict[str, Any]
    scorer: str
    dataset: str
    job_id: str | None
    job_status: str
    n: int
    passed: int
    errors: int
    score: float
    previous_run_id: str | None
    previous_score: float | None = None
    regressions: list[str]
    improvements: list[str]
    min_score: float | None = None
    max_regressions: int | None = None
    status: Literal["passed", "failed_threshold"]
    results: str
    lm_eval: dict[str, Any] | None = Field(None, description="an lm-eval suite's task metrics, versions and jobs")


class ResultRow(BaseModel):
    id: str
    output: str | None
    expected: str | None
    passed: bool
    score: float
    error: str | None = None


class History:
    def __init__(self, root: str, suite: str, storage: StorageConfig) -> None:
        self.suite = suite
        self.base: Location = resolve(root, storage).child(suite)

    def run_dir(self, run_id: str) -> Location:
        return self.base.child("runs").child(run_id)

    def index(self) -> list[dict]:
        location = self.base.child("index.json")
        return json.loads(location.read_bytes()) if location.exists() else []

    def latest(self) -> RunRecord | None:
        runs = self.index()
        return self.record(runs[-1]["run_id"]) if runs else None

    def record(self, run_id: str) -> RunRecord:
        return RunRecord.model_validate_json(self.run_dir(run_id).child("run.json").read_bytes())

    def results(self, run_id: str) -> list[ResultRow]:
        data = self.run_dir(run_id).child("results.parquet").read_bytes()
        return [ResultRow(**row) for row in pq.read_table(io.BytesIO(data)).to_pylist()]

    def write(self, record: RunRecord, rows: list[ResultRow]) -> None:
        """results.parquet, then run.json, then the index: a run is in the history once it is complete."""
        run_dir = self.run_dir(record.run_id)
        table = pa.Table.from_pylist([row.model_dump() for row in rows], schema=RESULTS_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        run_dir.child("results.parquet").write_bytes(buffer.getvalue())
        run_dir.child("run.json").write_bytes(record.model_dump_json(indent=2).encode())
        summary = {key: getattr(record, key) for key in ("run_id", "scheduled_for", "started_at", "finished_at",
                                                          "n", "passed", "score", "status")}
        summary["regressions"] = len(record.regressions)
        summary["improvements"] = len(record.improvements)
        summaries = self.base.child("summaries")
        summaries.child(f"{record.run_id}.json").write_bytes(json.dumps(summary).encode())
        with _INDEX_LOCK:
            runs = [r for r in self.index() if r["run_id"] != record.run_id]
            self.base.child("index.json").write_bytes(json.dumps(_with_missing(runs, summaries), indent=1).encode())


def _with_missing(runs: list[dict], summaries: Location) -> list[dict]:
    """`runs` plus every run with a summary that `runs` lacks, in the order they finished: another process that
    rewrote the index at the same moment (a beat still finishing runs after losing the lead) cannot drop a run."""
    known = {r["run_id"] for r in runs}
    for name in summaries.list_names():
        if name.removesuffix(".json") not in known:
            runs.append(json.loads(summaries.child(name).read_bytes()))
    return sorted(runs, key=lambda r: r["finished_at"])


def diff(previous: list[ResultRow], current: list[ResultRow]) -> tuple[list[str], list[str]]:
    """(regressions, improvements): ids that passed before and fail now, and the other way round."""
    before = {row.id: row.passed for row in previous}
    regressions = [row.id for row in current if before.get(row.id) is True and not row.passed]
    improvements = [row.id for row in current if before.get(row.id) is False and row.passed]
    return regressions, improvements
