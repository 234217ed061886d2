"""Eval runs in process: scoring, history, regressions against the previous run, and the eval webhooks."""
from __future__ import annotations

import json
import time

import pyarrow.parquet as pq
from standardwebhooks import Webhook

from tests.helpers.pipeline import LOCAL
from tests.helpers.receiver import SECRET
from tide.jobs.evals.history import History
from tide.jobs.evals.runner import EmbeddedExecutor, run_suite
from tide.jobs.evals.suites import Suite
from tide.jobs.webhooks.courier import Courier, WebhookConfig
from tide.jobs.webhooks.outbox import MemoryOutbox

ITEMS = [{"id": "q1", "prompt": "one two", "expected": "two one"},
         {"id": "q2", "prompt": "red green blue", "expected": "blue green red"},
         {"id": "q3", "messages": [{"role": "user", "content": "x y"}], "expected": "y x"},
         {"id": "q4", "prompt": "alpha", "expected": "alpha"}]


def write(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_second_run_reports_the_changed_item_as_a_regression_and_fires_eval_regressed(tmp_path, service, receiver):
    hook = receiver()
    dataset = tmp_path / "smoke.jsonl"
    suite = Suite(dataset=write(dataset, ITEMS + ['{"id": "bad"']), history=str(tmp_path / "history"),
                  scorer="exact", sampling={"temperature": 0, "max_tokens": 8}, min_score=0.7,
                  max_regressions=0, webhook=hook.url)
    outbox = MemoryOutbox()
    executor = EmbeddedExecutor(service, LOCAL, price_per_worker_hour=0.0, template=None)
    first = run_suite("smoke", suite, executor, LOCAL, outbox)
    assert (first.n, first.passed, first.errors, first.status) == (5, 4, 1, "passed")
    assert first.score == 0.8 and first.previous_run_id is None and first.job_status == "completed"

    write(dataset, [dict(ITEMS[0], expected="something else")] + ITEMS[1:])
    second = run_suite("smoke", suite, executor, LOCAL, outbox, scheduled_for=1_700_000_000)
    assert second.previous_run_id == first.run_id and second.previous_score == 0.8
    assert second.regressions == ["q1"] and second.improvements == [] and second.score == 0.75
    assert second.status == "failed_threshold" and second.scheduled_for == "2023-11-14T22:13:20Z"

    history = History(str(tmp_path / "history"), "smoke", LOCAL)
    assert [r["run_id"] for r in history.index()] == [first.run_id, second.run_id]
    on_disk = json.loads((tmp_path / "history" / "smoke" / "runs" / second.run_id / "run.json").read_text())
    for field in ("run_id", "suite", "scheduled_for", "started_at", "finished_at", "model", "engine_version",
                  "chat_template_hash", "sampling", "n", "passed", "score", "previous_run_id", "regressions",
                  "improvements", "status"):
        assert field in on_disk
    table = pq.read_table(tmp_path / "history" / "smoke" / "runs" / first.run_id / "results.parquet").to_pylist()
    assert {r["id"]: (r["output"], r["passed"]) for r in table}["q2"] == ("blue green red", True)
    assert [r for r in table if r["error"]][0]["id"] == "item-4"

    Courier(outbox, WebhookConfig(secrets=[SECRET], allow_private=True, schedule="0")).drain()
    events = [Webhook(SECRET).verify(body, headers) for headers, body, _ in hook.received]
    assert [e["type"] for e in events] == ["eval.completed", "eval.regressed"]
    assert events[1]["data"] == {"id": second.run_id, "suite": "smoke", "status": "failed_threshold", "n": 4,
                                 "passed": 3, "score": 0.75, "regressions": 1, "improvements": 0}


def test_an_engine_error_on_one_item_is_an_error_row(tmp_path, service):
    long = " ".join(["w"] * 100)  # longer than the fake engine's context
    suite = Suite(dataset=write(tmp_path / "d.jsonl", [ITEMS[0], {"id": "long", "prompt": long, "expected": "w"}]),
                  history=str(tmp_path / "h"), scorer="exact")
    record = run_suite("ctx", suite, EmbeddedExecutor(service, LOCAL, price_per_worker_hour=0.0, template=None), LOCAL)
    rows = {r.id: r for r in History(str(tmp_path / "h"), "ctx", LOCAL).results(record.run_id)}
    assert rows["q1"].passed and not rows["long"].passed and rows["long"].error
    assert record.started_at <= record.finished_at and time.time() > 0
