"""The job report: sampled series stay bounded, cost counts each worker's busy time once, and a job run through the
shared pipeline leaves summary.json with cost and plot data and a self-contained report.html beside it."""
from __future__ import annotations

import json
import re

import pytest

from tests.helpers.fake_engine import FakeEngine
from tests.helpers.pipeline import run_local
from tests.helpers.rows import write_jsonl
from tide.jobs.report.cost import job_cost, worker_seconds
from tide.jobs.report.html import render_report
from tide.jobs.report.series import SeriesRecorder
from tide.jobs.specs import JobSpec
from tide.jobs.state import EngineLoad, ShardProgress, ShardState, ShardStatus
from tide.jobs.summary import format_report
from tide.workers.engine_service import EngineService


def test_recorder_stays_bounded_and_keeps_first_and_last():
    recorder, progress = SeriesRecorder(max_samples=16), ShardProgress()
    for t in range(1000):
        progress.completion_tokens = t
        recorder.sample(float(t), progress, EngineLoad, force=t in (0, 999))
    samples = recorder.samples
    assert len(samples) <= 17 and samples[0].t == 0 and samples[-1].t == 999
    assert [s.t for s in samples] == sorted(s.t for s in samples)


def shard(index, worker, start, end, tokens=0):
    return ShardState(index=index, num_rows=1, status=ShardStatus.DONE, worker=worker, started_at=start,
                      finished_at=end, progress=ShardProgress(completion_tokens=tokens))


def test_cost_counts_overlapping_shards_of_a_worker_once():
    shards = [shard(0, "a", 0, 10), shard(1, "a", 5, 20), shard(2, "a", 30, 40), shard(3, "b", 0, 3600)]
    assert worker_seconds(shards) == {"a": 30.0, "b": 3600.0}
    cost = job_cost(shards, completion_tokens=500_000, price_per_worker_hour=2.0)
    assert cost["worker_seconds"] == 3630.0
    assert cost["cost"] == pytest.approx(3630 / 3600 * 2.0, rel=1e-6)
    assert cost["cost_per_1m_output_tokens"] == pytest.approx(cost["cost"] * 2, rel=1e-6)


@pytest.fixture
def slow_service():
    service = EngineService(FakeEngine(max_num_seqs=2, step_delay_s=0.01), idle_wait_s=0.01)
    yield service
    service.close()


def test_job_writes_summary_with_cost_and_a_self_contained_report(tmp_path, slow_service, monkeypatch):
    monkeypatch.setenv("TIDE_PRICE_PER_WORKER_HOUR", "99")  # the price is passed, never read from the environment
    rows = [{"id": f"r{i}", "prompt": " ".join(f"w{k}" for k in range(i % 7 + 2))} for i in range(40)]
    spec = JobSpec(input=str(write_jsonl(tmp_path / "in.jsonl", rows)), output=str(tmp_path / "out"), shard_rows=10)
    job = run_local(spec, slow_service, price_per_worker_hour=3.6, shards_in_flight=2)
    prefix = tmp_path / "out" / job.id
    summary = json.loads((prefix / "summary.json").read_text())
    cost = summary["cost"]
    assert cost["price_per_worker_hour"] == 3.6 and cost["worker_seconds"] > 0
    assert cost["cost"] == pytest.approx(cost["worker_seconds"] / 1000, abs=1e-5)
    assert summary["histograms"]["ttft"]["counts"] and sum(summary["histograms"]["latency"]["counts"]) == 40
    series = summary["series"]
    assert sum(series["output_tokens_per_s"]) > 0 and "embedded" in series["workers"]
    assert len(list(prefix.glob("series-*.json"))) == 4
    page = (prefix / "report.html").read_text()
    assert page == render_report(summary)
    assert not re.search(r"(src|href)=|https?://", page.replace("http://www.w3.org", ""))  # nothing to fetch
    for text in ("Throughput", "Batch occupancy", "KV cache", "Preemptions", "Time to first token", "p99",
                 "worker-seconds", "embedded"):
        assert text in page


def test_printed_report_prices_worker_time_only_when_a_price_is_set(tmp_path, slow_service):
    rows = [{"id": f"r{i}", "prompt": f"hello there {i}"} for i in range(4)]
    spec = JobSpec(input=str(write_jsonl(tmp_path / "in.jsonl", rows)), output=str(tmp_path / "out"), shard_rows=2)
    job = run_local(spec, slow_service, shards_in_flight=2)
    summary = json.loads((tmp_path / "out" / job.id / "summary.json").read_text())
    unpriced = next(line for line in format_report(summary).splitlines() if line.strip().startswith("cost"))
    assert "set TIDE_PRICE_PER_WORKER_HOUR" in unpriced and "= 0.0000" not in unpriced and "x 0/h" not in unpriced
    summary["cost"] = job_cost([], completion_tokens=1_000_000, price_per_worker_hour=2.0)
    summary["cost"].update(worker_seconds=1800.0, cost=1.0, cost_per_1m_output_tokens=1.0)
    priced = next(line for line in format_report(summary).splitlines() if line.strip().startswith("cost"))
    assert "1800.0 worker-s x 2/h = 1.0000 (1.0000 per 1M output tokens)" in priced


def test_tide_report_rewrites_the_page_of_a_results_directory(tmp_path, slow_service, capsys):
    from tide.cli import main

    rows = [{"id": f"r{i}", "prompt": f"hello there {i}"} for i in range(6)]
    spec = JobSpec(input=str(write_jsonl(tmp_path / "in.jsonl", rows)), output=str(tmp_path / "out"), shard_rows=3)
    job = run_local(spec, slow_service, shards_in_flight=2)
    prefix = tmp_path / "out" / job.id
    (prefix / "report.html").unlink()
    assert main(["report", str(prefix)]) == 0
    assert capsys.readouterr().out.strip() == str(prefix / "report.html")
    assert job.id in (prefix / "report.html").read_text()
