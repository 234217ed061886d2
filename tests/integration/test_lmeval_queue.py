"""The lm-eval backend across processes: its jobs on a real worker through Redis and through a real `tide api`, with
the same answers as in process; and a suite of lm-eval tasks that `tide beat` runs into the history."""
from __future__ import annotations

import json

import pytest
from lm_eval.api.instance import Instance

from tests.helpers.lmeval_tasks import write_tasks
from tests.helpers.services import BUCKET, SERVED
from tests.helpers.waiting import until
from tide.lmeval.model import TideLM
from tide.settings import get_settings
from tide.workers.processes import free_port, start_api, start_beat, stop

API_KEY = "lm-eval-key"
CONTEXT = "Question: Which planet is known as the red planet?\nAnswer:"
SCORE = [(CONTEXT, " Mars"), (CONTEXT, " Venus"), ("", "Hello there."), ("one two three " * 12, "four")]
GENERATE = [(CONTEXT, {"until": ["\n"], "max_gen_toks": 6, "do_sample": False})]


def answers(lm: TideLM) -> tuple[list, list]:
    scored = lm.loglikelihood([Instance("loglikelihood", {}, a, i) for i, a in enumerate(SCORE)])
    generated = lm.generate_until([Instance("generate_until", {}, a, i) for i, a in enumerate(GENERATE)])
    return scored, generated


@pytest.fixture
def settings_storage(monkeypatch):
    """TIDE_STORAGE on the services' S3, where the workers read the backend's job files."""
    monkeypatch.setenv("TIDE_STORAGE", f"s3://{BUCKET}/lm-eval-it")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_backend_runs_its_jobs_on_the_workers_and_through_the_api(services, worker, settings_storage, tmp_path):
    model_dir = str(services.model_dir)
    local = TideLM(model=model_dir, dtype="float32", local=True, max_length=32)
    try:
        expected = answers(local)
    finally:
        local.close()
    queued = TideLM(model=SERVED, tokenizer=model_dir, redis_url=services.redis_url, max_length=32, timeout=120)
    assert queued.backend_info.description == f"on the workers through {services.redis_url}"
    check_same(answers(queued), expected)

    port = free_port()
    api = start_api(dict(services.env, TIDE_API_KEYS=API_KEY, TIDE_STORAGE=f"s3://{BUCKET}/api"), port,
                    tmp_path / "api.log")
    try:
        remote = TideLM(model=SERVED, tokenizer=model_dir, api_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY,
                        max_length=32, timeout=120)
        check_same(answers(remote), expected)
        wrong_key = TideLM(model=SERVED, tokenizer=model_dir, api_url=f"http://127.0.0.1:{port}", api_key="nope",
                           max_length=32)
        with pytest.raises(RuntimeError, match="answered 401"):
            answers(wrong_key)
    finally:
        stop(api)


def check_same(got: tuple[list, list], expected: tuple[list, list]) -> None:
    (scored, generated), (ref_scored, ref_generated) = got, expected
    assert generated == ref_generated
    for (lp, greedy), (ref_lp, ref_greedy) in zip(scored, ref_scored):
        assert abs(lp - ref_lp) < 1e-4 and greedy == ref_greedy


def test_tide_beat_runs_a_suite_of_lm_eval_tasks_into_the_history(services, worker, tmp_path):
    include = write_tasks(tmp_path / "tasks")
    (tmp_path / "suites.yaml").write_text(
        f"suites:\n  harness:\n    model: {SERVED}\n    schedule: '* * * * * */10'\n    history: history\n"
        f"    lm_eval:\n      tasks: [tide_mc, tide_gen]\n      include_path: tasks\n"
        f"      tokenizer: {services.model_dir}\n")
    beat = start_beat(dict(services.env, TIDE_LOG_LEVEL="INFO"), tmp_path / "beat.log",
                      extra=("--config", str(tmp_path / "suites.yaml"), "--tick", "0.5", "--grace", "60"))
    index = tmp_path / "history" / "harness" / "index.json"
    try:
        until(lambda: index.exists() and json.loads(index.read_text()), 240, poll_s=0.5)
    finally:
        stop(beat)
    run = json.loads(index.read_text())[0]
    assert run["n"] == 6 + 5 and run["scheduled_for"] is not None
    record = json.loads((tmp_path / "history" / "harness" / "runs" / run["run_id"] / "run.json").read_text())
    assert record["scorer"] == "lm-eval" and record["errors"] == 0 and record["job_status"] == "completed"
    assert set(record["lm_eval"]["results"]) == {"tide_mc", "tide_gen"} and len(record["lm_eval"]["jobs"]) == 2
    assert include.exists()
