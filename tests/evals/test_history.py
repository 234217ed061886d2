"""The run history's index under runs that end at the same moment."""
from __future__ import annotations

import json
import threading

from tide.jobs.evals.history import History, ResultRow, RunRecord
from tide.jobs.storage import StorageConfig


def record(run_id: str, finished_at: str) -> RunRecord:
    return RunRecord(run_id=run_id, suite="s", started_at=finished_at, finished_at=finished_at, model="m",
                     engine_version="0", chat_template_hash=None, sampling={}, scorer="exact", dataset="d.jsonl",
                     job_id=None, job_status="completed", n=1, passed=1, errors=0, score=1.0, previous_run_id=None,
                     regressions=[], improvements=[], status="passed", results="results.parquet")


ROWS = [ResultRow(id="q", output="a", expected="a", passed=True, score=1.0)]


def test_runs_ending_together_all_reach_the_index(tmp_path):
    history = History(str(tmp_path), "s", StorageConfig())
    threads = [threading.Thread(target=history.write, args=(record(f"r{i}", "2026-11-28T00:00:00Z"), ROWS))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["run_id"] for r in history.index()) == [f"r{i}" for i in range(8)]


def test_a_run_another_process_dropped_from_the_index_comes_back_with_the_next_run(tmp_path):
    history = History(str(tmp_path), "s", StorageConfig())
    history.write(record("r0", "2026-11-28T00:00:00Z"), ROWS)
    history.write(record("r1", "2026-11-28T00:00:05Z"), ROWS)
    index = tmp_path / "s" / "index.json"
    index.write_text(json.dumps([r for r in json.loads(index.read_text()) if r["run_id"] != "r0"]))  # lost update
    history.write(record("r2", "2026-11-28T00:00:10Z"), ROWS)
    assert [r["run_id"] for r in history.index()] == ["r0", "r1", "r2"]
    history.write(record("r1", "2026-11-28T00:00:15Z"), ROWS)  # a rerun replaces its entry
    assert [(r["run_id"], r["finished_at"]) for r in history.index()][-1] == ("r1", "2026-11-28T00:00:15Z")
    assert len(history.index()) == 3
